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

**Table-less writes** (`OutboxSettings.write_as="message"`, PostgreSQL only): the same statement
bumps the same counters, and instead of inserting rows emits one transactional logical decoding
message per event (`pg_logical_emit_message(true, prefix, json)`), in event order. The message is
part of the transaction: decoded only once it commits, never if it rolls back. Its prefix is
`outbox.table.MESSAGE_PREFIX` and the oid of the outbox table; its content a JSON object of the
columns the row would have had (`payload` and `headers` as the text they would hold). Only the
relay's WAL capture reads them; nothing is left in the outbox table.
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
from outbox.settings import WriteAs
from outbox.table import MESSAGE_PREFIX, outbox_table, versions_table

Row = dict[str, Any]
_WAL_LEVEL = "outboxkit.wal_level"  # in a connection's `info`: the server's, once asked

# What each outbox column of a PostgreSQL write is, as SQL over the event `e` and its aggregate's
# bumped counter (`version`): the same for a row and for a logical message, which carries them all.
_XID = "CAST(CAST(pg_current_xact_id() AS text) AS bigint)"
_MANY_AGGREGATES = {
    "event_id": "e.event_id", "aggregatetype": "e.aggregatetype", "aggregateid": "e.aggregateid",
    "aggregateversion": "b.version - e.total + e.rank", "type": "e.type", "topic": "e.topic", "key": "e.key",
    "payload": "e.payload", "headers": "e.headers", "schema_version": "e.schema_version",
    "shard_key": "e.shard_key", "xid": _XID, "created_at": "clock_timestamp()",
}  # fmt: skip
# A message's prefix: the outbox's, with the oid of the table the statement resolves `outbox` to.
_PREFIX = f"'{MESSAGE_PREFIX}' || CAST(CAST('outbox' AS regclass) AS oid)"


def _written(columns: dict[str, str], write_as: WriteAs) -> str:
    """The statement's last part: insert the outbox rows, or emit them as transactional logical
    messages (one per event, each a JSON object of the row's columns). Both end in `ORDER BY`,
    after which PostgreSQL evaluates a volatile output (9.6+): messages are emitted in event order."""
    if write_as == "row":
        return f"INSERT INTO outbox ({', '.join(columns)}) SELECT {', '.join(columns.values())}"
    fields = ", ".join(f"'{name}', {value}" for name, value in columns.items())
    return f"SELECT pg_logical_emit_message(true, {_PREFIX}, CAST(json_build_object({fields}) AS text))"


@cache
def _many_aggregates(write_as: WriteAs) -> TextClause:
    return text(
        f"""
        WITH bumped AS (
            INSERT INTO outbox_versions AS v (aggregatetype, aggregateid, version)
            SELECT * FROM unnest(
                CAST(:agg_types AS text[]), CAST(:agg_ids AS text[]), CAST(:agg_counts AS bigint[])
            )
            ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = v.version + EXCLUDED.version
            RETURNING v.aggregatetype, v.aggregateid, v.version
        )
        {_written(_MANY_AGGREGATES, write_as)}
        FROM unnest(
            CAST(:event_id AS text[]), CAST(:aggregatetype AS text[]), CAST(:aggregateid AS text[]),
            CAST(:rank AS bigint[]), CAST(:total AS bigint[]), CAST(:type AS text[]), CAST(:topic AS text[]),
            CAST(:key AS text[]), CAST(:payload AS text[]), CAST(:headers AS text[]),
            CAST(:schema_version AS int[]), CAST(:shard_key AS int[])
        ) WITH ORDINALITY AS e(event_id, aggregatetype, aggregateid, rank, total, type, topic, key, payload,
                               headers, schema_version, shard_key, ord)
        JOIN bumped b ON b.aggregatetype = e.aggregatetype AND b.aggregateid = e.aggregateid
        ORDER BY e.ord
        """  # noqa: S608 - only the fixed column expressions are formatted in
    )


_EVENT_COLUMNS = (
    "event_id", "aggregatetype", "aggregateid", "rank", "total", "type", "topic", "key", "payload", "headers",
    "schema_version", "shard_key",
)  # fmt: skip


def store(conn: Connection, rows: Sequence[Row], write_as: WriteAs = "row") -> None:
    """Write `rows` (outbox columns but the version) in order, each with its aggregate's next
    version: as outbox rows, or on PostgreSQL as logical messages (`OutboxSettings.write_as`)."""
    if conn.dialect.name == "postgresql":
        if write_as == "message":
            _expect_logical(conn)
        _store_postgresql(conn, rows, write_as)
    elif conn.dialect.name == "sqlite":
        if write_as == "message":
            raise ConfigurationError(
                "OUTBOXKIT_OUTBOX_WRITE_AS=message writes logical messages into PostgreSQL's write-ahead "
                "log, which SQLite has not: set it to row (the default) for an SQLite database"
            )
        _store_sqlite(conn, rows)
    else:
        raise ConfigurationError(
            f"outboxkit writes outbox rows on PostgreSQL and SQLite, not {conn.dialect.name}"
        )


def _expect_logical(conn: Connection) -> None:
    """Refuse to emit messages no relay could ever read: below `wal_level=logical` PostgreSQL
    writes them to its log all the same, and they are lost. Asked once per database connection
    (the setting changes only with a restart, which ends the connection)."""
    if _WAL_LEVEL not in conn.info:
        conn.info[_WAL_LEVEL] = conn.execute(text("SELECT current_setting('wal_level')")).scalar_one()
    if conn.info[_WAL_LEVEL] != "logical":
        raise ConfigurationError(
            f"OUTBOXKIT_OUTBOX_WRITE_AS=message needs PostgreSQL with wal_level=logical, and this server "
            f"has wal_level={conn.info[_WAL_LEVEL]}: set wal_level = logical and restart PostgreSQL, or "
            "write outbox rows (OUTBOXKIT_OUTBOX_WRITE_AS=row, the default)"
        )


def _store_postgresql(conn: Connection, rows: Sequence[Row], write_as: WriteAs) -> None:
    aggregates = {(row["aggregatetype"], row["aggregateid"]) for row in rows}
    if len(aggregates) == 1 and len(rows) <= _ONE_AGGREGATE_MOST:
        params: Row = {"aggregatetype": rows[0]["aggregatetype"], "aggregateid": rows[0]["aggregateid"]}
        for n, row in enumerate(rows):
            params |= {f"{column}_{n}": row[column] for column in _ONE_AGGREGATE_COLUMNS}
        conn.execute(_one_aggregate(len(rows), write_as), params)
        return
    _store_many_postgresql(conn, rows, write_as)


_ONE_AGGREGATE_COLUMNS = (
    "event_id", "type", "topic", "key", "payload", "headers", "schema_version", "shard_key",
)  # fmt: skip
# Events of one aggregate the `VALUES` statement takes at most; more go through the arrays. It
# binds each event's columns one by one, and PostgreSQL takes at most 65,535 parameters (7,281
# events); and it is prepared once per count, which only the usual few events should fill.
_ONE_AGGREGATE_MOST = 64


@cache
def _one_aggregate(count: int, write_as: WriteAs) -> TextClause:
    """The statement for `count` events of one aggregate; one per count, so PostgreSQL prepares it."""
    values = ", ".join(
        "("
        + ", ".join([f":event_id_{n}", str(n + 1)] + [f":{c}_{n}" for c in _ONE_AGGREGATE_COLUMNS[1:]])
        + ")"
        for n in range(count)
    )
    columns = _MANY_AGGREGATES | {
        # Typed: a message's json_build_object cannot infer a parameter's type as an insert does.
        "aggregatetype": "CAST(:aggregatetype AS text)",
        "aggregateid": "CAST(:aggregateid AS text)",
        "aggregateversion": f"b.version - {count} + e.rank",
        "schema_version": "CAST(e.schema_version AS integer)",
        "shard_key": "CAST(e.shard_key AS integer)",
    }
    return text(
        f"""
        WITH bumped AS (
            INSERT INTO outbox_versions AS v (aggregatetype, aggregateid, version)
            VALUES (:aggregatetype, :aggregateid, {count})
            ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = v.version + {count}
            RETURNING v.version
        )
        {_written(columns, write_as)}
        FROM bumped b, (VALUES {values})
            AS e(event_id, rank, type, topic, key, payload, headers, schema_version, shard_key)
        ORDER BY e.rank
        """  # noqa: S608 - only counts and parameter names are formatted in
    )


def _store_many_postgresql(conn: Connection, rows: Sequence[Row], write_as: WriteAs) -> None:
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
    conn.execute(_many_aggregates(write_as), params)


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
