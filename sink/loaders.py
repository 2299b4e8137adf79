"""Bulk loading, the one thing each warehouse does its own way.

Row-at-a-time INSERTs cost a round trip (PostgreSQL) or a plan (DuckDB) per row; these load a
whole batch in one statement: PostgreSQL's `COPY ... FROM STDIN`, DuckDB's `read_json` over a
newline-delimited file (JSON keeps NULL and '' apart, which CSV does not), in `sink.duckdb_loader`
so that a PostgreSQL warehouse runs without DuckDB installed. A new target needs a `Loader`: its
SQL type names and one bulk insert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import psycopg
from psycopg.sql import SQL, Identifier
from sqlalchemy import Connection, text

from sink.columns import Kind
from sink.errors import SinkConfigError, WarehouseError

Rows = Sequence[Sequence[Any]]  # in the order of the columns given with them
DATA_CLASSES = ("22", "23")  # SQLSTATE classes of refused values: data exception, constraint


class Loader(Protocol):
    """Appends rows to an existing table inside the caller's transaction, and says how the
    warehouse keeps two writers apart."""

    dialect: str  # the SQL types' family (`columns.SQL_TYPES`)
    keys: bool  # whether tables take primary keys (a lakehouse catalog has none)

    def load(self, conn: Connection, table: str, columns: Mapping[str, Kind], rows: Rows) -> None: ...

    def refused_data(self, error: BaseException) -> bool:
        """Whether `error` (a driver error) refuses a value rather than reports an outage."""
        ...

    def lock(self, conn: Connection, table: str) -> None:
        """Serialise schema changes of `table` among sinks until the transaction ends."""
        ...

    def partition(self, conn: Connection, table: str, keys: Sequence[str]) -> None:
        """Partition the new `table` by `keys` (SQL expressions); a lakehouse's alone."""
        ...

    def guard(self, conn: Connection) -> None:
        """Make this batch's transaction fail to commit if another batch commits while it runs,
        where rows locks and keys do not already (a lakehouse lets concurrent appends through)."""
        ...

    def conflicted(self, error: BaseException) -> bool:
        """Whether `error` (raised at commit) is a conflict with another writer's commit: nothing
        was written, and the batch, planned again from what is committed now, may be retried."""
        ...


def quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def column_list(conn: Connection, names: Sequence[str]) -> str:
    return ", ".join(quote(conn, name) for name in names)


class PostgresLoader:
    """COPY through psycopg 3 (`postgresql+psycopg://` URLs)."""

    dialect = "postgresql"
    keys = True

    def load(self, conn: Connection, table: str, columns: Mapping[str, Kind], rows: Rows) -> None:
        if not rows:
            return
        names = list(columns)
        sql = SQL("COPY {} ({}) FROM STDIN").format(Identifier(table), SQL(", ").join(map(Identifier, names)))
        try:
            with conn.connection.driver_connection.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
        except (
            psycopg.Error,
            UnicodeError,
            ValueError,
        ) as exc:  # raw driver use: SQLAlchemy does not wrap it
            raise WarehouseError(f"COPY into {table} failed: {exc}", data=self.refused_data(exc)) from exc

    def refused_data(self, error: BaseException) -> bool:
        if isinstance(error, psycopg.DataError | UnicodeError | ValueError):
            return True  # also refused client-side, before any SQLSTATE: NUL characters, surrogates
        return isinstance(error, psycopg.Error) and (error.sqlstate or "")[:2] in DATA_CLASSES

    def lock(self, conn: Connection, table: str) -> None:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"outboxkit.sink:{table}"}
        )

    def partition(self, conn: Connection, table: str, keys: Sequence[str]) -> None:
        not_partitioned(self.dialect)

    def guard(self, conn: Connection) -> None:
        """Nothing to do: the offsets' row locks and primary key keep two batches apart."""

    def conflicted(self, error: BaseException) -> bool:
        return False


def not_partitioned(dialect: str) -> None:
    """A SQL warehouse's tables are not partitioned (the settings refuse partition_by there)."""
    raise SinkConfigError(f"partition_by is for lakehouse warehouses, not {dialect}")


def loader_for(dialect: str, driver: str) -> Loader:
    """The loader of a SQLAlchemy dialect, or an error naming the URL schemes that work."""
    if dialect == "postgresql" and driver == "psycopg":
        return PostgresLoader()
    if dialect == "duckdb":
        from sink.duckdb_loader import DuckDBLoader  # noqa: PLC0415 - only DuckDB needs its driver

        return DuckDBLoader()
    if dialect == "ducklake":
        from sink.duckdb_loader import DuckLakeLoader  # noqa: PLC0415 - only DuckDB needs its driver

        return DuckLakeLoader()
    raise ValueError(
        f"no sink writer for {dialect}+{driver}: use a duckdb:///, ducklake:///, ducklake+postgresql:// "
        "or postgresql+psycopg:// warehouse URL"
    )
