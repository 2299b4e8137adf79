"""The sink's own bookkeeping tables, kept in the warehouse next to the data they describe.

Keeping them there is what makes a batch atomic: rows, offsets, dead letters, delete markers and
the column catalogue all commit or roll back in the one transaction of that batch.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, LargeBinary, MetaData, String, Table, Text, func

bookkeeping = MetaData()

offsets = Table(
    "outboxkit_offsets",
    bookkeeping,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)

dead_letters = Table(
    "outboxkit_dead_letters",
    bookkeeping,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    Column("action", String(16), nullable=False),  # 'dead-letter' (skipped) or 'stopped' (halted here)
    Column("reason", Text, nullable=False),
    Column("event_id", Text, nullable=True),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=True),
    Column("headers", Text, nullable=False),  # JSON list of [name, base64 value]
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

deleted = Table(
    "outboxkit_sink_deleted",
    bookkeeping,
    Column("table_name", String(63), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("version", BigInteger, nullable=True),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
)

catalog = Table(
    "outboxkit_sink_tables",
    bookkeeping,
    Column("table_name", String(63), primary_key=True),
    Column("topic", String(249), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("columns", Text, nullable=False),  # JSON {column: kind} of the payload columns
    Column("schema_version", Integer, nullable=False),
)
