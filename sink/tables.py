"""The sink's own bookkeeping tables, kept in the warehouse next to the data they describe.

Keeping them there is what makes a batch atomic: rows, offsets, dead letters, delete markers and
the column catalogue all commit or roll back in the one transaction of that batch.

A lakehouse catalog (DuckLake) has no primary keys or unique constraints, so the same tables are
also made without them (`bookkeeping_for`); what the keys guarded there is done by each batch's
commit conflicting with any other's (`outboxkit_commits`, see `sink.duckdb_loader.DuckLakeLoader`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Integer, LargeBinary, MetaData, String, Table, Text, func


def _define(metadata: MetaData, *, keyed: bool) -> MetaData:
    """The bookkeeping tables into `metadata`, with their primary keys or (lakehouses) without."""
    Table(
        "outboxkit_offsets",
        metadata,
        *_partition_of_group(keyed=keyed),
        Column("next_offset", BigInteger, nullable=False),
    )
    Table(
        "outboxkit_dead_letters",
        metadata,
        *_partition_of_group(keyed=keyed),
        Column("offset", BigInteger, primary_key=keyed, nullable=False),
        Column("action", String(16), nullable=False),  # 'dead-letter' (skipped) or 'stopped' (halted here)
        Column("reason", Text, nullable=False),
        Column("event_id", Text, nullable=True),
        Column("key", LargeBinary, nullable=True),
        Column("value", LargeBinary, nullable=True),
        Column("headers", Text, nullable=False),  # JSON list of [name, base64 value]
        Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    Table(
        "outboxkit_sink_deleted",
        metadata,
        Column("table_name", String(63), primary_key=keyed, nullable=False),
        Column("key", Text, primary_key=keyed, nullable=False),
        Column("version", BigInteger, nullable=True),
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
    )
    Table(
        "outboxkit_sink_tables",
        metadata,
        Column("table_name", String(63), primary_key=keyed, nullable=False),
        Column("topic", String(249), nullable=False),
        Column("mode", String(16), nullable=False),
        Column("columns", Text, nullable=False),  # JSON {column: kind} of the payload columns
        Column("schema_version", Integer, nullable=False),
    )
    if not keyed:  # one row every batch updates: two batches committing at once conflict
        Table("outboxkit_commits", metadata, Column("batches", BigInteger, nullable=False))
    return metadata


def _partition_of_group(*, keyed: bool) -> list[Column[Any]]:
    """The columns that name one consumer group's partition, the start of two tables' keys."""
    return [
        Column("group_id", String(255), primary_key=keyed, nullable=False),
        Column("topic", String(249), primary_key=keyed, nullable=False),
        Column("partition", Integer, primary_key=keyed, nullable=False),
    ]


bookkeeping = _define(MetaData(), keyed=True)
_unkeyed = _define(MetaData(), keyed=False)
offsets = bookkeeping.tables["outboxkit_offsets"]
dead_letters = bookkeeping.tables["outboxkit_dead_letters"]
deleted = bookkeeping.tables["outboxkit_sink_deleted"]
catalog = bookkeeping.tables["outboxkit_sink_tables"]
commits = _unkeyed.tables["outboxkit_commits"]


def bookkeeping_for(*, keyed: bool) -> MetaData:
    """The tables to create: with primary keys, or without for a catalog that has none."""
    return bookkeeping if keyed else _unkeyed
