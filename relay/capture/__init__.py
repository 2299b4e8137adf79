"""Capture sources: the contract (`relay.capture.source`), one module per database, and the
choice of source for an engine."""

from sqlalchemy import Engine

from relay.capture.postgres import PostgresCapture
from relay.capture.rows import envelope_of
from relay.capture.source import Backlog, Batch, CapturedRow, CaptureMode, CaptureSource, Position
from relay.capture.sqlite import SqliteCapture
from relay.errors import ConfigError
from relay.shards import ONLY, Shard

__all__ = [
    "Backlog",
    "Batch",
    "CaptureMode",
    "CaptureSource",
    "CapturedRow",
    "Position",
    "PostgresCapture",
    "SqliteCapture",
    "capture_for",
    "envelope_of",
    "expect_shards",
]


def capture_for(
    engine: Engine,
    shard: Shard = ONLY,
    *,
    mode: CaptureMode = "poll",
    source_id: str = "default",
    cleanup: bool = True,
) -> CaptureSource:
    """The capture source for the engine's database (and one shard of it, on PostgreSQL); with
    `mode="wal"`, PostgreSQL's log through the slot of `source_id`'s shard. `cleanup` False: the
    relay never deletes published rows (a WAL source then remembers none for it)."""
    if mode == "wal":
        # Only here: psycopg2 (the `wal` extra) is loaded by relays that stream the log.
        from relay.capture.wal import WalCapture  # noqa: PLC0415

        return WalCapture(engine, source_id, shard, cleanup=cleanup)
    if engine.dialect.name == "postgresql":
        return PostgresCapture(engine, shard)
    expect_shards(engine, shard.count)
    return SqliteCapture(engine)


def expect_shards(engine: Engine, count: int) -> None:
    """Refuse `count` shards where relays cannot share the outbox: SQLite has no advisory locks
    to lease shards with (`SoleLease`), so one relay reads all of it; PostgreSQL's leases split it."""
    if engine.dialect.name != "postgresql" and count > 1:
        raise ConfigError("an SQLite outbox has one relay and one shard: set OUTBOXKIT_RELAY_SHARDS=1")
