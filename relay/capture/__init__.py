"""Capture sources: the contract (`relay.capture.source`), one module per database, and the
choice of source for an engine."""

from sqlalchemy import Engine

from relay.capture.postgres import PostgresCapture
from relay.capture.rows import envelope_of
from relay.capture.source import Backlog, Batch, CaptureSource, OutboxRecord, Position
from relay.capture.sqlite import SqliteCapture
from relay.errors import CaptureError
from relay.shards import ONLY, Shard

__all__ = [
    "Backlog",
    "Batch",
    "CaptureSource",
    "OutboxRecord",
    "Position",
    "PostgresCapture",
    "SqliteCapture",
    "capture_for",
    "envelope_of",
]


def capture_for(engine: Engine, shard: Shard = ONLY) -> CaptureSource:
    """The capture source for the engine's database (and one shard of it, on PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        return PostgresCapture(engine, shard)
    if shard.count > 1:
        raise CaptureError("an SQLite outbox has one relay and one shard: set OUTBOXKIT_RELAY_SHARDS=1")
    return SqliteCapture(engine)
