"""Sink writers: apply a batch of events and its offsets to a warehouse in ONE transaction.

That single transaction is the whole exactly-once argument on this side: either the events and
the offsets after them are both durable, or neither is, and a restarted sink resumes from the
stored offsets. The event log is also unique by event id, so a duplicate that reached Kafka at a
new offset (an at-least-once producer upstream) is absorbed rather than applied twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from outbox.envelope import Envelope
from sink import offsets
from sink.errors import WarehouseError


@dataclass(frozen=True, slots=True)
class Delivered:
    """An event as the sink received it: the envelope and where it sat in Kafka."""

    envelope: Envelope
    partition: int
    offset: int


class SinkWriter(Protocol):
    """A warehouse target. Implementations need not be thread-safe."""

    def stored_offsets(self, group_id: str, topics: Iterable[str]) -> dict[offsets.TopicPartitionKey, int]:
        """Next offset per (topic, partition) as committed with the data; missing = from the start."""
        ...

    def write(self, group_id: str, batch: Sequence[Delivered]) -> int:
        """Apply `batch` and advance the group's offsets past it, atomically. Return rows applied
        (duplicates by event id are skipped). Raises `WarehouseError`; then nothing was applied."""
        ...


events_metadata = MetaData()

events_table = Table(
    "outboxkit_events",
    events_metadata,
    Column("event_id", String(36), primary_key=True),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", Text, nullable=True),
    Column("event_type", String(255), nullable=False),
    Column("aggregate_type", String(255), nullable=False),
    Column("aggregate_id", String(255), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


class SqlWriter:
    """Appends events to `outboxkit_events` on DuckDB or PostgreSQL (both speak ON CONFLICT)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        events_metadata.create_all(engine)
        offsets.offsets_metadata.create_all(engine)

    def stored_offsets(self, group_id: str, topics: Iterable[str]) -> dict[offsets.TopicPartitionKey, int]:
        with self._engine.connect() as conn:
            return offsets.load(conn, group_id, topics)

    def write(self, group_id: str, batch: Sequence[Delivered]) -> int:
        if not batch:
            return 0
        next_offsets = {(d.envelope.topic, d.partition): d.offset + 1 for d in batch}
        try:
            with self._engine.begin() as conn:
                rows = _new_rows(conn, batch)
                if rows:
                    conn.execute(insert(events_table).on_conflict_do_nothing(), rows)
                offsets.store(conn, group_id, next_offsets)
        except SQLAlchemyError as exc:
            raise WarehouseError(f"warehouse rejected a batch of {len(batch)} events: {exc}") from exc
        return len(rows)


def _new_rows(conn: Connection, batch: Sequence[Delivered]) -> list[dict[str, object]]:
    """Rows for the events not yet stored, first occurrence only.

    Looked up rather than counted from the insert: DuckDB reports no rowcount for executemany,
    and the number of duplicates skipped is a metric users watch.
    """
    ids = [item.envelope.event_id for item in batch]
    seen = set(
        conn.execute(select(events_table.c.event_id).where(events_table.c.event_id.in_(ids))).scalars()
    )
    rows = []
    for item in batch:
        if item.envelope.event_id not in seen:
            seen.add(item.envelope.event_id)
            rows.append(_row(item))
    return rows


def _row(item: Delivered) -> dict[str, object]:
    envelope = item.envelope
    return {
        "event_id": envelope.event_id,
        "topic": envelope.topic,
        "partition": item.partition,
        "offset": item.offset,
        "key": None if envelope.key is None else envelope.key.decode(),
        "event_type": envelope.event_type,
        "aggregate_type": envelope.aggregate_type,
        "aggregate_id": envelope.aggregate_id,
        "schema_version": envelope.schema_version,
        "payload": envelope.payload.decode(),  # checked to be UTF-8 when it was received
    }
