"""Storing outbox rows with their per-aggregate versions: the one place with dialect-specific SQL.

Versions come from a counter row per aggregate in `outbox_versions`, bumped with an upsert that
leaves the row locked until the application's transaction ends. That lock is what makes version
order commit order for one aggregate, and what the relay's PostgreSQL capture relies on: the
writers of one aggregate insert their outbox rows one transaction after the other.

`created_at` is taken once the counter row is locked (PostgreSQL's `clock_timestamp()` in the
insert, not `now()`, the transaction's start), with microseconds (SQLite's `CURRENT_TIMESTAMP` has
whole seconds): so the versions of one aggregate also have rising creation times, which is what
the sink's history takes as their validity.

On PostgreSQL the counters and the rows go in **one statement** per write — one round trip, the
same whatever the number of events — because each extra round trip is a large share of a short
application transaction (see `bench/`, B1). The usual write (one flush, one object) touches one
aggregate: a plain `VALUES` statement serves it, measured about 25 % faster than the general
statement, whose arrays (`unnest`) cost more to bind and parse than they save there. SQLite is
in-process: two plain statements per aggregate cost little there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, TextClause, insert, text
from sqlalchemy.dialects import sqlite

from outbox.errors import ConfigurationError
from outbox.table import outbox_table, versions_table

Row = dict[str, Any]

_POSTGRESQL = text(
    """
    WITH bumped AS (
        INSERT INTO outbox_versions AS v (aggregatetype, aggregateid, version)
        SELECT * FROM unnest(
            CAST(:agg_types AS text[]), CAST(:agg_ids AS text[]), CAST(:agg_counts AS bigint[])
        )
        ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = v.version + EXCLUDED.version
        RETURNING v.aggregatetype, v.aggregateid, v.version
    )
    INSERT INTO outbox (event_id, aggregatetype, aggregateid, aggregateversion, type, topic, key, payload,
                        headers, schema_version, shard_key, xid, created_at)
    SELECT e.event_id, e.aggregatetype, e.aggregateid, b.version - e.total + e.rank, e.type, e.topic,
           e.key, e.payload, e.headers, e.schema_version, e.shard_key,
           CAST(CAST(pg_current_xact_id() AS text) AS bigint), clock_timestamp()
    FROM unnest(
        CAST(:event_id AS text[]), CAST(:aggregatetype AS text[]), CAST(:aggregateid AS text[]),
        CAST(:rank AS bigint[]), CAST(:total AS bigint[]), CAST(:type AS text[]), CAST(:topic AS text[]),
        CAST(:key AS text[]), CAST(:payload AS text[]), CAST(:headers AS text[]),
        CAST(:schema_version AS int[]), CAST(:shard_key AS int[])
    ) WITH ORDINALITY AS e(event_id, aggregatetype, aggregateid, rank, total, type, topic, key, payload,
                           headers, schema_version, shard_key, ord)
    JOIN bumped b ON b.aggregatetype = e.aggregatetype AND b.aggregateid = e.aggregateid
    ORDER BY e.ord
    """
)
_EVENT_COLUMNS = (
    "event_id", "aggregatetype", "aggregateid", "rank", "total", "type", "topic", "key", "payload", "headers",
    "schema_version", "shard_key",
)  # fmt: skip


def store(conn: Connection, rows: Sequence[Row]) -> None:
    """Insert `rows` (outbox columns but the version) in order, each with its aggregate's next version."""
    if conn.dialect.name == "postgresql":
        _store_postgresql(conn, rows)
    elif conn.dialect.name == "sqlite":
        _store_sqlite(conn, rows)
    else:
        raise ConfigurationError(
            f"outboxkit writes outbox rows on PostgreSQL and SQLite, not {conn.dialect.name}"
        )


def _store_postgresql(conn: Connection, rows: Sequence[Row]) -> None:
    aggregates = {(row["aggregatetype"], row["aggregateid"]) for row in rows}
    if len(aggregates) == 1:
        params: Row = {"aggregatetype": rows[0]["aggregatetype"], "aggregateid": rows[0]["aggregateid"]}
        for n, row in enumerate(rows):
            params |= {f"{column}_{n}": row[column] for column in _ONE_AGGREGATE_COLUMNS}
        conn.execute(_one_aggregate(len(rows)), params)
        return
    _store_many_postgresql(conn, rows)


_ONE_AGGREGATE_COLUMNS = (
    "event_id", "type", "topic", "key", "payload", "headers", "schema_version", "shard_key",
)  # fmt: skip


@cache
def _one_aggregate(count: int) -> TextClause:
    """The statement for `count` events of one aggregate; one per count, so PostgreSQL prepares it."""
    values = ", ".join(
        "("
        + ", ".join([f":event_id_{n}", str(n + 1)] + [f":{c}_{n}" for c in _ONE_AGGREGATE_COLUMNS[1:]])
        + ")"
        for n in range(count)
    )
    return text(
        f"""
        WITH bumped AS (
            INSERT INTO outbox_versions AS v (aggregatetype, aggregateid, version)
            VALUES (:aggregatetype, :aggregateid, {count})
            ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = v.version + {count}
            RETURNING v.version
        )
        INSERT INTO outbox (event_id, aggregatetype, aggregateid, aggregateversion, type, topic, key,
                            payload, headers, schema_version, shard_key, xid, created_at)
        SELECT e.event_id, :aggregatetype, :aggregateid, bumped.version - {count} + e.rank, e.type, e.topic,
               e.key, e.payload, e.headers, CAST(e.schema_version AS integer), CAST(e.shard_key AS integer),
               CAST(CAST(pg_current_xact_id() AS text) AS bigint), clock_timestamp()
        FROM bumped, (VALUES {values})
            AS e(event_id, rank, type, topic, key, payload, headers, schema_version, shard_key)
        ORDER BY e.rank
        """  # noqa: S608 - only counts and parameter names are formatted in
    )


def _store_many_postgresql(conn: Connection, rows: Sequence[Row]) -> None:
    totals = Counter((row["aggregatetype"], row["aggregateid"]) for row in rows)
    seen: Counter[tuple[str, str]] = Counter()
    events: list[Row] = []
    for row in rows:
        aggregate = (row["aggregatetype"], row["aggregateid"])
        seen[aggregate] += 1
        events.append(row | {"rank": seen[aggregate], "total": totals[aggregate]})
    # Counters in one fixed order, so two transactions bumping the same ones cannot deadlock.
    aggregates = sorted(totals)
    params: Row = {name: [event[name] for event in events] for name in _EVENT_COLUMNS}
    params |= {
        "agg_types": [kind for kind, _ in aggregates],
        "agg_ids": [ident for _, ident in aggregates],
        "agg_counts": [totals[aggregate] for aggregate in aggregates],
    }
    conn.execute(_POSTGRESQL, params)


def _store_sqlite(conn: Connection, rows: Sequence[Row]) -> None:
    def aggregate(row: Row) -> tuple[str, str]:
        return row["aggregatetype"], row["aggregateid"]

    versioned = [dict(row) for row in rows]
    for (kind, ident), group in groupby(sorted(versioned, key=aggregate), key=aggregate):
        members = list(group)  # sorted() is stable: the order within an aggregate is kept
        bump = (
            sqlite.insert(versions_table)
            .values(aggregatetype=kind, aggregateid=ident, version=len(members))
            .on_conflict_do_update(
                index_elements=[versions_table.c.aggregatetype, versions_table.c.aggregateid],
                set_={"version": versions_table.c.version + len(members)},
            )
            .returning(versions_table.c.version)
        )
        last = int(conn.execute(bump).scalar_one())
        for version, row in enumerate(members, start=last - len(members) + 1):
            row["aggregateversion"] = version
    now = datetime.now(UTC)  # after the bumps: this transaction holds SQLite's one write lock
    conn.execute(insert(outbox_table), [row | {"created_at": now} for row in versioned])
