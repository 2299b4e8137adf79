"""Time travel: a table as it was at a lakehouse snapshot, or a history table's versions valid at
a past time (`outboxkit sink query`).

A lakehouse answers from its own snapshots: every committed batch is one, so "as of" a snapshot
is exactly what the sink had committed then (DuckLake: `AT (VERSION => n)`, `AT (TIMESTAMP => t)`).

A SQL warehouse keeps no old versions of rows, except in a `history` table (on any warehouse):
there "valid at T" is the version of each key valid at T, by the events' own times (when each
was written in the app's transaction, `merge.event_time`), not by when the sink applied them. The two answer
different questions: a snapshot is what the warehouse showed; history is what the source held.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from sink import columns
from sink.errors import SinkConfigError
from sink.loaders import quote
from sink.tables import catalog


@dataclass(frozen=True)
class Snapshot:
    """One committed state of a lakehouse: its id and when it was committed."""

    id: int
    committed_at: datetime.datetime


def snapshots(conn: Connection) -> list[Snapshot]:
    """The lakehouse's snapshots, oldest first; a SinkConfigError on a warehouse without them."""
    _lakehouse_only(conn, "snapshots")
    found = conn.exec_driver_sql(
        "SELECT snapshot_id, snapshot_time FROM ducklake_snapshots('lake') ORDER BY 1"
    )
    return [Snapshot(int(id_), at) for id_, at in found]


def rows_as_of(
    conn: Connection,
    table: str,
    *,
    valid_at: datetime.datetime | None = None,
    snapshot: int | None = None,
    snapshot_at: datetime.datetime | None = None,
) -> tuple[list[str], list[Sequence[Any]]]:
    """The rows of `table`, with its column names: a history table's versions valid at
    `valid_at` (any warehouse), or a lakehouse's table at `snapshot` or at the last snapshot
    committed by `snapshot_at`. Exactly one of the three."""
    if sum(given is not None for given in (valid_at, snapshot, snapshot_at)) != 1:
        raise ValueError("give exactly one of valid_at, snapshot and snapshot_at")
    for moment in (valid_at, snapshot_at):
        if moment is not None and moment.tzinfo is None:
            raise SinkConfigError(f"time {moment.isoformat()} has no time zone: add one, e.g. +00:00")
    name = quote(conn, table)
    if valid_at is not None:
        _history_only(conn, table)
        query = text(
            f"SELECT * FROM {name} WHERE {columns.VALID_FROM} <= :t "
            f"AND ({columns.VALID_TO} IS NULL OR {columns.VALID_TO} > :t)"
        )
    else:
        _lakehouse_only(conn, "snapshots")
        clause = "VERSION => :n" if snapshot is not None else "TIMESTAMP => CAST(:t AS TIMESTAMPTZ)"
        query = text(f"SELECT * FROM {name} AT ({clause})")
    try:
        result = conn.execute(query, {"n": snapshot, "t": valid_at or snapshot_at})
    except DBAPIError as exc:
        raise SinkConfigError(
            f"no such state of table {table!r}: {exc.orig}; `outboxkit sink snapshots` lists the snapshots "
            "kept (expired ones are gone)"
        ) from exc
    return list(result.keys()), [tuple(row) for row in result]


def _lakehouse_only(conn: Connection, what: str) -> None:
    if conn.dialect.name != "ducklake":
        raise SinkConfigError(
            f"{what} are a lakehouse's (DuckLake); a {conn.dialect.name} warehouse keeps none. Ask for "
            "the versions valid at a time instead (--valid-at), of a table the sink maps in history mode"
        )


def _history_only(conn: Connection, table: str) -> None:
    """A SQL warehouse answers "as of" from a history table only; say so for any other."""
    mode = conn.execute(
        catalog.select().with_only_columns(catalog.c.mode).where(catalog.c.table_name == table)
    )
    found = mode.scalar()
    if found is None:
        raise SinkConfigError(f"table {table!r} is not one the sink wrote in this warehouse")
    if found != "history":
        raise SinkConfigError(
            f"table {table!r} is in {found} mode, which keeps only the latest state: a {conn.dialect.name} "
            f"warehouse answers 'as of' from a table mapped in history mode (add one with mode "
            "'history' for the same topic), or use a DuckLake warehouse, which keeps snapshots"
        )
