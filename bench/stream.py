"""B4's input: a topic of outboxkit events, produced once per run, and what a warehouse must hold
after consuming it.

Event n (0, 1, 2 ...) belongs to aggregate `order-{n % aggregates}` at version
`n // aggregates + 1` (the fewer aggregates, the more events update a key already held: "key
conflicts"), and events are produced in n order by an idempotent producer, so each key's
versions increase along its partition as a relay would leave them. Values are generated, not
random: the state an upsert table must end with is computed here, not read back from the run.

The topic is written by a plain idempotent producer, not transactionally as the relay writes: the
benchmark measures consuming, and 200,000 relay-produced events would cost a B2 run first. The
payload is a few flat fields of each JSON kind a warehouse column takes (ints, a string, a float).
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from bench.kafka import check_exactly, committed_event_ids
from bench.report import BenchmarkError
from runtime.kafka import KafkaSettings
from sink.columns import Kind, metadata_columns
from wire import Envelope
from wire.headers import HEADER_AGGREGATE_VERSION, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION

CONFLICTS = (0.0, 50.0, 90.0)  # % of events updating a key met before; 90: ~10 versions per key
EVENT_TYPE = "OrderUpdated"
STATUSES = ("placed", "paid", "packed", "shipped")
# The payload's fields and the column kind each becomes: what the sink infers from them.
FIELDS: Mapping[str, Kind] = {
    "seq": Kind.INTEGER,
    "customer_id": Kind.INTEGER,
    "quantity": Kind.INTEGER,
    "status": Kind.TEXT,
    "amount": Kind.FLOAT,
}
# The columns of the sink's upsert table, in order: every variant writes rows of this shape.
COLUMNS: Mapping[str, Kind] = {**metadata_columns("upsert"), **FIELDS}
# A fast plain producer: idempotent (no duplicates, order kept per partition), the relay's partitioner.
PRODUCER: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "linger.ms": 50,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "partitioner": "murmur2_random",
}

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Stream:
    """The events on `topic`: how many, over how many aggregates."""

    topic: str
    events: int
    aggregates: int

    @classmethod
    def planned(cls, topic: str, events: int, conflicts: float) -> Stream:
        """`conflicts` % of the events update a key an earlier event created; the others create one
        (90 %: ~10 versions per key; 0 %: one event per key)."""
        return cls(topic, events, max(1, round(events * (1 - conflicts / 100))))

    @property
    def conflicts(self) -> float:
        """The share (%) of events whose key an earlier event already created."""
        return 100 * (self.events - self.aggregates) / self.events

    def expected(self) -> dict[str, tuple[int, int]]:
        """What an upsert table must hold after all the events: key -> (version, seq) of its newest."""
        newest: dict[str, tuple[int, int]] = {}
        for n in range(self.events):
            newest[_key(n, self.aggregates)] = (n // self.aggregates + 1, n)
        return newest

    def envelopes(self) -> Iterator[Envelope]:
        for n in range(self.events):
            key = _key(n, self.aggregates)
            yield Envelope(
                event_id=str(uuid.uuid4()),
                topic=self.topic,
                key=key.encode(),
                payload=json.dumps(_payload(n)).encode(),
                event_type=EVENT_TYPE,
                aggregate_type="order",
                aggregate_id=key,
                aggregate_version=n // self.aggregates + 1,
            )


def _key(n: int, aggregates: int) -> str:
    return f"order-{n % aggregates}"


def _payload(n: int) -> dict[str, Any]:
    return {
        "seq": n,
        "customer_id": n % 997,
        "quantity": 1 + n % 7,
        "status": STATUSES[n % len(STATUSES)],
        "amount": round((n * 37) % 100_000 / 100, 2) + 0.5,  # never integral: stays a JSON float
    }


def produce(kafka: KafkaSettings, stream: Stream) -> None:
    """Write the stream's events to its topic, then refuse to go on unless the topic holds each of
    them exactly once: every figure of the run is a rate over these events."""
    producer = Producer(kafka.client_config(PRODUCER))
    failures: list[KafkaError] = []
    ids: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for envelope in stream.envelopes():
        ids.append(envelope.event_id)
        _produce(producer, envelope, delivered)
    if producer.flush(120) != 0 or failures:
        first = failures[0].str() if failures else "not acknowledged within 120 s"
        raise BenchmarkError(f"B4: producing the input failed ({len(failures)} records), first: {first}")
    check_exactly("B4 input", ids, committed_event_ids(kafka, stream.topic))


def _produce(producer: Producer, envelope: Envelope, delivered: Any) -> None:
    while True:
        try:
            headers: list[tuple[str, str | bytes | None]] = list(envelope.kafka_headers())
            producer.produce(
                envelope.topic, envelope.payload, envelope.key, headers=headers, on_delivery=delivered
            )
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.1)
        else:
            return


def row_of(message: Message) -> Row:
    """A consumed event as a row of `COLUMNS`, reading its fields and nothing more: no envelope
    validation, no dead letters. What the naive consumer and the ceiling load."""
    headers = dict(cast("list[tuple[str, bytes]]", message.headers()))
    payload = json.loads(cast("bytes", message.value()))
    return (
        cast("bytes", message.key()).decode(),
        headers[HEADER_EVENT_ID].decode(),
        headers[HEADER_EVENT_TYPE].decode(),
        int(headers[HEADER_AGGREGATE_VERSION]),
        int(headers[HEADER_SCHEMA_VERSION]),
        message.topic(),
        message.partition(),
        message.offset(),
        datetime.datetime.fromtimestamp(message.timestamp()[1] / 1000, datetime.UTC),
        False,
        *(payload[name] for name in FIELDS),
    )
