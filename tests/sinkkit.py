"""Test kit for the sink: Kafka records built in memory, and a driver that settles them into a
warehouse exactly as the running sink does (assemble -> one write -> remember the offsets).

Only the consumer is left out, so the writer contract runs against each real warehouse without a
broker; everything that involves Kafka itself is tested end to end elsewhere.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Message, Producer
from sqlalchemy import Engine, text

from runtime.kafka import KafkaSettings
from sink import TableMapping
from sink.batch import Policy, Refusals, assemble
from sink.errors import RecordsRefusedError
from sink.run import by_topic
from sink.writer import Batch, Outcome, SqlWriter
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


class Settle:
    """Settles messages into a warehouse as the sink would, remembering the stored offsets."""

    def __init__(
        self, engine: Engine, mappings: Sequence[TableMapping], *, group: str = "g", policy: Policy = "dlq"
    ) -> None:
        self.engine = engine
        self.mappings = list(mappings)
        self.group = group
        self.policy = policy
        self.writer = SqlWriter(engine, self.mappings)
        self.positions: dict[tuple[str, int], int | None] = {}
        self.stopped: set[tuple[str, int]] = set()
        self.reload()

    def reload(self) -> None:
        """Re-read the stored offsets, as a consumer does on assignment."""
        topics = {mapping.topic for mapping in self.mappings}
        stored = self.writer.stored_offsets(self.group, topics)
        self.positions = {where: stored.get(where) for where in {*self.positions, *stored}}

    def batch(
        self, *messages: Message, refused: Refusals | None = None
    ) -> tuple[Batch, set[tuple[str, int]]]:
        """The batch the sink would write for `messages` (stopped partitions left out)."""
        for m in messages:
            self.positions.setdefault((m.topic() or "", m.partition() or 0), None)
        running = [m for m in messages if (m.topic(), m.partition()) not in self.stopped]
        return assemble(
            running,
            by_topic(self.mappings),
            self.writer.schemas,
            self.positions,
            max_bytes=10_000,
            policy=self.policy,
            refused=refused or {},
        )

    def __call__(self, *messages: Message) -> Outcome:
        batch, stopping = self.batch(*messages)
        try:
            outcome = self.writer.write(self.group, batch)
        except RecordsRefusedError as refused:  # as the sink does: settle them per policy
            batch, stopping = self.batch(*messages, refused=refused.reasons)
            outcome = self.writer.write(self.group, batch)
        for where, (_, next_offset) in batch.moves.items():
            self.positions[where] = next_offset
        self.stopped |= stopping
        return outcome

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
