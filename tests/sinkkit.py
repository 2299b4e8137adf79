"""Test kit for the sink: Kafka records built in memory, and a driver that settles them into a
warehouse exactly as the running sink does (`sink.settle`: assemble -> one write -> remember the
offsets, refusals settled per policy, a refused value isolated).

Only the consumer is left out (an in-memory stand-in keeps the stored offsets and the stops), so
the warehouse contract runs against each real warehouse without a broker; everything that
involves Kafka itself is tested end to end elsewhere.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Message, Producer
from sqlalchemy import Engine, text

from runtime.kafka import KafkaSettings
from sink import TableMapping
from sink.batch import Policy, assemble
from sink.consumer import consumed_record
from sink.records import Consumed, Where
from sink.run import by_topic
from sink.settle import Settler
from sink.warehouse import Outcome, Warehouse
from sink.writer import SqlWriter
from wire import Envelope

# Record timestamps start an hour ago: older ones would fall to the broker's retention (7 days)
# within minutes, and a sink would find its stored offsets gone.
T0 = (int(time.time()) - 3600) * 1000
_UNSET: Any = object()


def message(
    topic: str,
    offset: int,
    *,
    key: str | bytes | None = "k1",
    payload: Mapping[str, Any] | bytes | None = _UNSET,
    event_type: str = "ThingUpdated",
    version: int | None = None,
    schema_version: int = 1,
    partition: int = 0,
    event_id: str | None = None,
    at_ms: int | None = None,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> Message:
    """A consumed record. Defaults: an outboxkit event at `offset`, version `offset + 1`."""
    raw_key = key.encode() if isinstance(key, str) else key
    if payload is _UNSET:
        payload = {"n": offset}
    value = json.dumps(payload).encode() if isinstance(payload, Mapping) else payload
    if headers is None:
        headers = Envelope(
            event_id=event_id or str(uuid.uuid4()),
            topic=topic,
            key=raw_key,
            payload=value or b"",
            event_type=event_type,
            aggregate_type="thing",
            aggregate_id=(raw_key or b"").decode(errors="replace"),
            aggregate_version=offset + 1 if version is None else version,
            schema_version=schema_version,
        ).kafka_headers()
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=raw_key,
        value=value,
        headers=list(headers),
        timestamp=(1, T0 + 1000 * offset if at_ms is None else at_ms),
    )


def tombstone(topic: str, offset: int, key: str, *, partition: int = 0) -> Message:
    return Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.encode(),
        value=None,
        timestamp=(1, T0 + 1000 * offset),
    )


class Assigned:
    """The consumer's part in settling, in memory: every partition a record comes from is
    assigned, starting at the offset the warehouse stores for it."""

    def __init__(self, warehouse: Warehouse, group: str, topics: Iterable[str]) -> None:
        self._warehouse, self._group, self._topics = warehouse, group, set(topics)
        self.stored: dict[Where, int | None] = {}
        self.stopped: set[Where] = set()
        self.reseek()

    def positions(self) -> Mapping[Where, int | None]:
        return self.stored

    def running(self, records: Sequence[Consumed]) -> list[Consumed]:
        for record in records:
            self.stored.setdefault(record.source.where, None)
        return [record for record in records if record.source.where not in self.stopped]

    def halted(self) -> int:
        return len(self.stopped)

    def advanced(self, moves: Mapping[Where, tuple[int | None, int]]) -> None:
        for where, (_, next_offset) in moves.items():
            self.stored[where] = next_offset

    def stop(self, where: Where) -> None:
        self.stopped.add(where)

    def reseek(self) -> None:
        """Re-read the stored offsets, as a consumer does on assignment."""
        found = self._warehouse.stored_offsets(self._group, self._topics)
        self.stored.update({where: found.get(where) for where in {*self.stored, *found}})


class Settle:
    """Settles messages into a warehouse as the sink does, remembering the stored offsets."""

    def __init__(
        self, engine: Engine, mappings: Sequence[TableMapping], *, group: str = "g", policy: Policy = "dlq"
    ) -> None:
        self.engine = engine
        self.mappings = list(mappings)
        self.group = group
        self.writer = SqlWriter(engine, self.mappings)
        self.assigned = Assigned(self.writer, group, {mapping.topic for mapping in self.mappings})
        self.positions = self.assigned.stored  # tests set one, as after `sink replay`
        self._settler = Settler(
            self.writer, self.assigned, group, by_topic(self.mappings), max_bytes=10_000, policy=policy
        )

    def reload(self) -> None:
        """Re-read the stored offsets, as a consumer does on assignment."""
        self.assigned.reseek()

    def __call__(self, *messages: Message) -> Outcome:
        """Settle `messages` as one poll; what the transactions it took did, summed. A warehouse
        that fails without refusing a value raises at once (the sink would retry it)."""
        outcomes = self._settler.settle([consumed_record(m) for m in messages], lambda: True)
        return Outcome(
            applied=sum(outcome.applied for outcome in outcomes),
            skipped=sum(outcome.skipped for outcome in outcomes),
            dead_letters=[letter for outcome in outcomes for letter in outcome.dead_letters],
        )

    def write(self, *messages: Message) -> Outcome:
        """Write `messages` as one batch, once: the warehouse's own answer, nothing settled after."""
        records = self.assigned.running([consumed_record(m) for m in messages])
        batch, _ = assemble(
            records,
            by_topic(self.mappings),
            self.writer.schemas,
            self.assigned.positions(),
            max_bytes=10_000,
            policy="dlq",
            refused={},
        )
        return self.writer.write(self.group, batch)

    def rows(self, table: str, order: str = "_key") -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
            return [dict(row._mapping) for row in result]

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.rows("outboxkit_dead_letters", 'topic, "partition", "offset"')


def publish(
    kafka: KafkaSettings,
    messages: Sequence[Message],
    *,
    transactional_id: str | None = None,
    abort: bool = False,
) -> None:
    """Produce `messages` as they are (key, value, headers, partition) — in one Kafka transaction,
    committed or aborted, when `transactional_id` is given."""
    config: dict[str, str | bool] = {"enable.idempotence": True}
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    producer = Producer(kafka.client_config(config))
    if transactional_id is not None:
        producer.init_transactions(30)
        producer.begin_transaction()
    for m in messages:
        producer.produce(
            m.topic() or "",
            m.value(),
            m.key(),
            partition=m.partition() or 0,
            headers=m.headers() or [],
            timestamp=m.timestamp()[1],
        )
    if transactional_id is None:
        assert producer.flush(30) == 0
    elif abort:
        producer.abort_transaction(30)
    else:
        producer.commit_transaction(30)
