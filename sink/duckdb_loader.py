"""DuckDB's bulk path, for DuckDB files and DuckLake catalogs, apart from `sink.loaders` because
it imports the DuckDB driver: a sink writing to PostgreSQL must run with `outboxkit[sink]` alone,
without `[duckdb]`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import duckdb
import orjson
from sqlalchemy import Connection, update

from sink.columns import SQL_TYPES, Kind, to_json
from sink.loaders import Rows, column_list, not_partitioned, quote
from sink.tables import commits

DATA_ERRORS = (
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.ConstraintException,
    duckdb.OutOfRangeException,
)  # what DuckDB raises for values it refuses, as opposed to an outage
LINE = orjson.OPT_APPEND_NEWLINE


class DuckDBLoader:
    """`INSERT ... SELECT FROM read_json(file)`: DuckDB's own bulk path from Python."""

    dialect = "duckdb"
    keys = True

    def load(self, conn: Connection, table: str, columns: Mapping[str, Kind], rows: Rows) -> None:
        if not rows:
            return
        names = list(columns)
        fd, path = tempfile.mkstemp(prefix="outboxkit-", suffix=".ndjson")
        try:
            with os.fdopen(fd, "wb") as file:
                for row in rows:
                    file.write(to_json(dict(zip(names, row, strict=True)), LINE))
            types = ", ".join(
                f"{_literal(name)}: '{SQL_TYPES['duckdb'][kind]}'" for name, kind in columns.items()
            )
            conn.exec_driver_sql(
                f"INSERT INTO {quote(conn, table)} ({column_list(conn, names)}) "
                f"SELECT {column_list(conn, names)} FROM read_json(?, format='newline_delimited', "
                f"columns={{{types}}})",
                (path,),
            )
        finally:
            os.unlink(path)

    def refused_data(self, error: BaseException) -> bool:
        return isinstance(error, DATA_ERRORS)

    def lock(self, conn: Connection, table: str) -> None:
        """Nothing to do: one process writes a DuckDB file at a time."""

    def partition(self, conn: Connection, table: str, keys: Sequence[str]) -> None:
        not_partitioned(self.dialect)

    def guard(self, conn: Connection) -> None:
        """Nothing to do: one process writes a DuckDB file at a time."""

    def conflicted(self, error: BaseException) -> bool:
        return False


class DuckLakeLoader(DuckDBLoader):
    """DuckLake: DuckDB's bulk path, no keys, and batches kept apart by commit conflicts.

    DuckLake checks at commit whether a concurrent commit touched what this transaction did, and
    refuses it then; but concurrent inserts never conflict, so two sinks could both insert a
    partition's first offset, or both append a batch. Every batch therefore also updates the one
    row of `outboxkit_commits`: updates of one table do conflict, so of two batches that overlap
    in time one commits and the other fails (`conflicted`) and is planned again from the new
    snapshot, where the offsets' compare-and-set sees the winner's move. Several sinks on one
    lake so commit one at a time, however many partitions they split.
    """

    keys = False

    def lock(self, conn: Connection, table: str) -> None:
        """Nothing to do: schema changes of two batches conflict at commit like the rest of them."""

    def partition(self, conn: Connection, table: str, keys: Sequence[str]) -> None:
        """New data files go to one directory per key value (`day=3/`); queries on the key skip
        the others."""
        conn.exec_driver_sql(f"ALTER TABLE {quote(conn, table)} SET PARTITIONED BY ({', '.join(keys)})")

    def guard(self, conn: Connection) -> None:
        conn.execute(update(commits).values(batches=commits.c.batches + 1))

    def conflicted(self, error: BaseException) -> bool:
        return isinstance(error, duckdb.TransactionException) and "conflict" in str(error).lower()


def _literal(name: str) -> str:
    """A column name as a SQL string literal (in read_json's column list)."""
    return "'" + name.replace("'", "''") + "'"
