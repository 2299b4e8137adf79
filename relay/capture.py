"""Capture sources: where the relay reads committed outbox rows from.

A `CaptureSource` hands out outbox records in **commit order** with strictly increasing
positions; a record whose position is at or below one already handed out never appears later.
That promise is what makes a single integer checkpoint sufficient — and it is a property of the
database, not of a query, which is why each dialect gets its own source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine, Row, select
from sqlalchemy.exc import SQLAlchemyError

from outbox.envelope import Envelope
from outbox.table import outbox_table
from relay.errors import CaptureError


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outbox row read by the relay: its capture position and the envelope to produce."""

    position: int
    envelope: Envelope


class CaptureSource(Protocol):
    """Reads committed outbox records. Implementations need not be thread-safe."""

    def fetch(self, after: int, limit: int) -> Sequence[OutboxRecord]:
        """Up to `limit` committed records with position > `after`, in commit order.

        Raises `CaptureError` if the outbox cannot be read; the relay retries with backoff.
        """
        ...


class SqliteCapture:
    """Polls an SQLite outbox by id.

    Safe because SQLite admits one writer at a time: a transaction takes the write lock before
    it allocates an id and keeps it until it commits, so ids are handed out in commit order and
    `id > :last` can never skip a row that commits later. The same query on PostgreSQL or MySQL
    would skip rows (a transaction holding a smaller id may commit after a larger one is read),
    so other dialects are refused here.
    """

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name != "sqlite":
            raise CaptureError(
                f"SqliteCapture reads SQLite only, not {engine.dialect.name}: polling by id on a "
                "multi-writer database skips rows committed out of id order"
            )
        self._engine = engine

    def fetch(self, after: int, limit: int) -> Sequence[OutboxRecord]:
        query = select(outbox_table).where(outbox_table.c.id > after).order_by(outbox_table.c.id).limit(limit)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise CaptureError(f"cannot read the outbox table: {exc}") from exc
        return [OutboxRecord(position=row.id, envelope=_envelope(row)) for row in rows]


def _envelope(row: Row[tuple[object, ...]]) -> Envelope:
    headers: dict[str, str] = json.loads(row.headers or "{}")
    return Envelope(
        event_id=row.event_id,
        topic=row.topic,
        key=None if row.key is None else row.key.encode(),
        payload=row.payload.encode(),
        event_type=row.type,
        aggregate_type=row.aggregatetype,
        aggregate_id=row.aggregateid,
        aggregate_version=row.aggregateversion,
        schema_version=row.schema_version,
        extra_headers=tuple((name, value.encode()) for name, value in headers.items()),
    )
