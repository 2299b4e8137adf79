"""The warehouse's tables as the sink made them: the column catalogue, and the DDL that evolves it.

`outboxkit_sink_tables` records each table's columns (their kinds) and the schema version it
takes, so a restarted sink, or another instance, maps records exactly as the table was built.
Tables only widen: a new field adds a nullable column, a kind widens losslessly
(`columns.WIDENINGS`); nothing is ever dropped or narrowed. The DDL runs inside the batch's own
transaction, so a table change commits with the rows that needed it, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import Connection, Engine, delete, insert, select

from sink import columns
from sink.columns import SQL_TYPES, Kind
from sink.errors import SinkConfigError
from sink.loaders import Loader, loader_for, quote
from sink.mapping import TableMapping, TableSchema
from sink.tables import bookkeeping_for, catalog, commits


class Catalogue:
    """The committed schema per table, and the DDL that brings a table up to a batch's working schema."""

    def __init__(self, loader: Loader, mappings: Mapping[str, TableMapping]) -> None:
        self._loader = loader
        self._mappings = mappings
        self._types = SQL_TYPES[loader.dialect]
        self.schemas: dict[str, TableSchema] = {}

    def load(self, conn: Connection) -> None:
        """Read the catalogue (at start, and again when another instance may have widened a table)."""
        self.schemas = self._with_mapping_versions(_load(conn))

    def _with_mapping_versions(self, schemas: dict[str, TableSchema]) -> dict[str, TableSchema]:
        """A mapping's `schema_version` is the version its table takes (records of a higher one
        that do not fit stop their partition): raising it is how an operator accepts a change."""
        for table, mapping in self._mappings.items():
            schema = schemas.setdefault(table, TableSchema())
            schema.schema_version = max(schema.schema_version, mapping.schema_version)
        return schemas

    def evolve_to_model(self, conn: Connection, mapping: TableMapping) -> None:
        """Give a table every column of its mapping's model up front (typed, not inferred)."""
        assert mapping.model is not None
        working = self.schemas.get(mapping.table, TableSchema()).copy()
        working.columns = {**working.columns, **columns.model_columns(mapping.model)}
        working.schema_version = max(working.schema_version, mapping.schema_version)
        self.ensure(conn, mapping, working)
        self.schemas[mapping.table] = working

    def committed(self, working: Mapping[str, TableSchema]) -> None:
        """The transaction that ran `ensure` for these working schemas committed: they are the tables now."""
        self.schemas.update(working)

    def ensure(self, conn: Connection, mapping: TableMapping, working: TableSchema) -> None:
        """Create the table, or add the working schema's new columns (always nullable); then the catalogue.

        Several sinks may widen one table: the DDL is serialised per table (`Loader.lock`), the
        catalogue row is re-read under that lock and merged, never overwritten, and columns are
        added only if missing — so a column another instance added, or a commit whose
        acknowledgement was lost, is no conflict.
        """
        committed = self.schemas.get(mapping.table)
        if committed is not None and committed == working and committed.columns:
            return
        self._loader.lock(conn, mapping.table)
        stored = _load(conn, mapping.table).get(mapping.table)
        if stored is not None:
            working.columns = columns.merged(stored.columns, working.columns)
            working.schema_version = max(stored.schema_version, working.schema_version)
            if stored == working:
                return
        name = quote(conn, mapping.table)
        self._create(conn, mapping, working, new=stored is None)
        for column, kind in working.columns.items():
            before = None if stored is None else stored.columns.get(column)
            if before is None:
                conn.exec_driver_sql(
                    f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote(conn, column)} {self._types[kind]}"
                )
            elif (before, kind) in columns.WIDENINGS:  # lossless; PostgreSQL rewrites the table once
                conn.exec_driver_sql(
                    f"ALTER TABLE {name} ALTER COLUMN {quote(conn, column)} SET DATA TYPE {self._types[kind]}"
                )
        conn.execute(delete(catalog).where(catalog.c.table_name == mapping.table))
        conn.execute(
            insert(catalog).values(
                table_name=mapping.table,
                topic=mapping.topic,
                mode=mapping.mode,
                columns=json.dumps(working.columns),
                schema_version=working.schema_version,
            )
        )

    def _create(self, conn: Connection, mapping: TableMapping, working: TableSchema, *, new: bool) -> None:
        """The table if it is missing, with its key where the warehouse has keys; a `new` one is
        partitioned as its mapping says."""
        wanted = columns.metadata_columns(mapping.mode) | working.columns
        definitions = ", ".join(
            f"{quote(conn, column)} {self._types[kind]}" for column, kind in wanted.items()
        )
        if self._loader.keys:
            key = columns.KEY if mapping.mode == "upsert" else columns.EVENT_ID
            definitions += f", PRIMARY KEY ({quote(conn, key)})"
        conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {quote(conn, mapping.table)} ({definitions})")
        if new and mapping.partition_by:
            self._loader.partition(conn, mapping.table, _partition_keys(conn, mapping, wanted))


def _partition_keys(conn: Connection, mapping: TableMapping, has: Mapping[str, Kind]) -> list[str]:
    """The mapping's partition keys as SQL, each on a column of `has`, the new table's."""
    keys = []
    for key in mapping.partition_by:
        part, _, rest = key.partition("(")
        column = rest.rstrip(")") if rest else part
        if column not in has:
            raise SinkConfigError(
                f"table {mapping.table}: partition_by names {column!r}, which the table does not have; name "
                "one of outboxkit's columns (e.g. day(_event_time)) or a field of the mapping's model"
            )
        keys.append(f"{part}({quote(conn, column)})" if rest else quote(conn, column))
    return keys


def create_bookkeeping(engine: Engine, loader: Loader | None = None) -> None:
    """Create the sink's own tables if missing. Serialised among sinks: several starting at once
    on a new warehouse would otherwise race on CREATE TABLE (and lose with a unique violation)."""
    loader = loader or loader_for(engine.dialect.name, engine.driver)
    with engine.begin() as conn:
        loader.lock(conn, "bookkeeping")
        bookkeeping_for(keyed=loader.keys).create_all(conn)
        if not loader.keys and conn.execute(select(commits).limit(1)).first() is None:
            conn.execute(insert(commits).values(batches=0))  # two first starts may add two: harmless


def _load(conn: Connection, table: str | None = None) -> dict[str, TableSchema]:
    schemas = {}
    query = select(catalog.c.table_name, catalog.c.columns, catalog.c.schema_version)
    if table is not None:
        query = query.where(catalog.c.table_name == table)
    for row in conn.execute(query):
        kinds = {name: Kind(kind) for name, kind in json.loads(row.columns).items()}
        schemas[row.table_name] = TableSchema(kinds, row.schema_version)
    return schemas
