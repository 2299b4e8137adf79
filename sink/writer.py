"""Sink writers: apply a batch and its offsets to a warehouse in ONE transaction.

That single transaction is the exactly-once argument on this side: the rows, the offsets after
them (moved by compare-and-set, see `offsets`), the dead letters, the delete markers and the
column catalogue all commit together or not at all, and a restarted sink resumes from the stored
offsets. Within it, `merge` decides which events are new, so replays and duplicates change nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, delete, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from sink import columns, deadletters, merge, names, offsets
from sink.columns import SQL_TYPES, Kind
from sink.errors import RecordsRefusedError, WarehouseError
from sink.loaders import Loader, loader_for, quote
from sink.mapping import Row, TableMapping, TableSchema
from sink.merge import Held, Plan, Stamp
from sink.records import DeadLetter, Raw
from sink.tables import bookkeeping, catalog, deleted

log = logging.getLogger(names.LOGGER)
MARKER_COLUMNS = {
    "table_name": Kind.TEXT,
    "key": Kind.TEXT,
    "version": Kind.INTEGER,
    "partition": Kind.INTEGER,
    "offset": Kind.INTEGER,
}


@dataclass
class Batch:
    """What the sink hands a writer: rows per table, dead letters, offset moves, draft schemas."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    moves: dict[offsets.TopicPartition, tuple[int | None, int]] = field(default_factory=dict)
    schemas: dict[str, TableSchema] = field(default_factory=dict)


@dataclass
class Outcome:
    applied: int = 0
    skipped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


class SinkWriter(Protocol):
    """A warehouse target. Implementations need not be thread-safe."""

    schemas: dict[str, TableSchema]  # committed columns per table

    def stored_offsets(self, group_id: str, topics: Iterable[str]) -> dict[offsets.TopicPartition, int]:
        """Next offset per (topic, partition) as committed with the data; missing = from the start."""
        ...

    def write(self, group_id: str, batch: Batch) -> Outcome:
        """Apply `batch` and move the offsets, atomically. Raises `WarehouseError` (nothing was
        applied; retry) or `PartitionMovedError` (another instance owns a partition now)."""
        ...

    def close(self) -> None:
        """Release the warehouse connections (DuckDB: the file lock)."""
        ...

    def ping(self) -> bool:
        """Whether the warehouse answers at all (tells an outage from a batch it keeps refusing)."""
        ...

    def refresh(self) -> None:
        """Re-read the table catalogue: another instance may have widened a table."""
        ...


class SqlWriter:
    """Writes to DuckDB or PostgreSQL through SQLAlchemy, bulk-loading with the dialect's `Loader`."""

    def __init__(
        self,
        engine: Engine,
        mappings: Sequence[TableMapping],
        *,
        max_version_jump: int = merge.MAX_VERSION_JUMP,
    ) -> None:
        self._engine = engine
        self._max_jump = max_version_jump
        self._loader: Loader = loader_for(engine.dialect.name, engine.driver)
        self._mappings = {mapping.table: mapping for mapping in mappings}
        self._types = SQL_TYPES[self._loader.dialect]
        try:
            create_bookkeeping(engine, self._loader)
            with engine.begin() as conn:
                self.schemas = self._with_mapping_versions(_load_catalog(conn))
                for mapping in mappings:
                    if mapping.model is not None:
                        self._evolve_to_model(conn, mapping)
        except SQLAlchemyError as exc:
            raise WarehouseError(f"cannot prepare the warehouse tables: {exc}") from exc

    def stored_offsets(self, group_id: str, topics: Iterable[str]) -> dict[offsets.TopicPartition, int]:
        try:
            with self._engine.connect() as conn:
                return offsets.load(conn, group_id, topics)
        except SQLAlchemyError as exc:
            raise WarehouseError(f"cannot read the stored offsets ({type(exc).__name__}): {exc}") from exc

    def write(self, group_id: str, batch: Batch) -> Outcome:
        outcome = Outcome()
        try:
            with self._engine.begin() as conn:
                offsets.advance(conn, group_id, batch.moves)
                for table, draft in batch.schemas.items():
                    self._ensure(conn, self._mappings[table], draft)
                refused: dict[tuple[str, int, int], str] = {}
                for table, rows in batch.rows.items():
                    plan = self._apply(conn, self._mappings[table], batch.schemas[table], rows)
                    outcome.applied += plan.applied
                    outcome.skipped += plan.skipped
                    for letter in plan.dead:
                        source = letter.source
                        refused.setdefault((source.topic, source.partition, source.offset), letter.reason)
                if refused:
                    raise RecordsRefusedError(refused)  # rolls back: the sink settles them per policy
                outcome.dead_letters = batch.dead_letters
                deadletters.store(conn, group_id, outcome.dead_letters)
        except SQLAlchemyError as exc:
            raise WarehouseError(
                f"the warehouse rejected a batch ({type(exc).__name__}): {exc}",
                data=self._loader.refused_data(getattr(exc, "orig", exc)),
            ) from exc
        self.schemas.update(batch.schemas)
        return outcome

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> bool:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def refresh(self) -> None:
        try:
            with self._engine.connect() as conn:
                self.schemas = self._with_mapping_versions(_load_catalog(conn))
        except SQLAlchemyError as exc:
            log.warning("catalogue not re-read (%s); the next batch tries again", exc)

    def _with_mapping_versions(self, schemas: dict[str, TableSchema]) -> dict[str, TableSchema]:
        """A mapping's `schema_version` is the version its table takes (records of a higher one
        that do not fit stop their partition): raising it is how an operator accepts a change."""
        for table, mapping in self._mappings.items():
            schema = schemas.setdefault(table, TableSchema())
            schema.schema_version = max(schema.schema_version, mapping.schema_version)
        return schemas

    def _evolve_to_model(self, conn: Connection, mapping: TableMapping) -> None:
        assert mapping.model is not None
        draft = self.schemas.get(mapping.table, TableSchema()).copy()
        draft.columns = {**draft.columns, **columns.model_columns(mapping.model)}
        draft.schema_version = max(draft.schema_version, mapping.schema_version)
        self._ensure(conn, mapping, draft)
        self.schemas[mapping.table] = draft

    def _apply(self, conn: Connection, mapping: TableMapping, draft: TableSchema, rows: list[Row]) -> Plan:
        table = mapping.table
        if mapping.mode == "append":
            plan = merge.plan_append(rows, self._stored_ids(conn, table, rows))
        elif mapping.mode == "history":
            plan = merge.plan_history(table, rows, self._held(conn, mapping, rows), max_jump=self._max_jump)
            self._close(conn, table, plan)
        else:
            held = self._held(conn, mapping, rows)
            plan = merge.plan_upsert(
                table, rows, held, soft=mapping.deletes == "soft", max_jump=self._max_jump
            )
            self._replace(conn, table, plan)
        unheld = list(self._unheld(draft, plan.inserts))
        if unheld:  # the batch is rolled back and settled again without them: load nothing now
            plan.dead.extend(unheld)
            return plan
        all_columns = columns.metadata_columns(mapping.mode) | draft.columns
        rows_in_order = _tuples(mapping.mode, list(draft.columns), plan.inserts, plan)
        self._loader.load(conn, table, all_columns, rows_in_order)
        self._remember_deleted(conn, table, plan.deleted)
        return plan

    def _unheld(self, draft: TableSchema, rows: list[Row]) -> Iterator[DeadLetter]:
        """Rows with a value their numeric column would round or refuse, as refusals that say so
        (the batch is rolled back and they are settled as dead letters, per policy)."""
        numeric = [name for name, kind in draft.columns.items() if kind is Kind.NUMERIC]
        dialect = self._loader.dialect
        for row in rows if numeric else ():
            values = row.values
            reason = next(
                (
                    f"field {name!r} {why}"
                    for name in numeric
                    if (why := columns.unheld(values.get(name), dialect))
                ),
                None,
            )
            if reason is not None:
                yield DeadLetter(row.source, Raw(row.key.encode(), None, ()), reason, row.event_id)

    def _ensure(self, conn: Connection, mapping: TableMapping, draft: TableSchema) -> None:
        """Create the table, or add the draft's new columns (always nullable); then the catalogue.

        Several sinks may widen one table: the DDL is serialised per table (`Loader.lock`), the
        catalogue row is re-read under that lock and merged, never overwritten, and columns are
        added only if missing — so a column another instance added, or a commit whose
        acknowledgement was lost, is no conflict.
        """
        committed = self.schemas.get(mapping.table)
        if committed is not None and committed == draft and committed.columns:
            return
        self._loader.lock(conn, mapping.table)
        stored = _load_catalog(conn, mapping.table).get(mapping.table)
        if stored is not None:
            draft.columns = columns.merged(stored.columns, draft.columns)
            draft.schema_version = max(stored.schema_version, draft.schema_version)
            if stored == draft:
                return
        name = quote(conn, mapping.table)
        wanted = columns.metadata_columns(mapping.mode) | draft.columns
        key = columns.KEY if mapping.mode == "upsert" else columns.EVENT_ID
        definitions = ", ".join(
            f"{quote(conn, column)} {self._types[kind]}" for column, kind in wanted.items()
        )
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {name} ({definitions}, PRIMARY KEY ({quote(conn, key)}))"
        )
        for column, kind in draft.columns.items():
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
                columns=json.dumps(draft.columns),
                schema_version=draft.schema_version,
            )
        )

    def _stored_ids(self, conn: Connection, table: str, rows: list[Row]) -> set[str]:
        found = conn.execute(
            text(f"SELECT _event_id FROM {quote(conn, table)} WHERE _event_id = ANY(:ids)"),
            {"ids": [row.event_id for row in rows]},
        )
        return {event_id for (event_id,) in found}

    def _held(self, conn: Connection, mapping: TableMapping, rows: list[Row]) -> dict[str, Held]:
        """What the table holds for each key of the batch: its live row, or its delete marker."""
        keys = list(dict.fromkeys(row.key for row in rows))
        current = "TRUE" if mapping.mode == "upsert" else f"{columns.VALID_TO} IS NULL"
        held: dict[str, Held] = {}
        found = conn.execute(
            text(
                f"SELECT _key, _version, _partition, _offset FROM {quote(conn, mapping.table)} "
                f"WHERE {current} AND _key = ANY(:keys)"
            ),
            {"keys": keys},
        )
        for key, version, partition, offset in found:
            held[key] = Held(Stamp(version, partition, offset), live=True)  # a row (soft-deleted or not)
        markers = text(
            f'SELECT "key", "version", "partition", "offset" FROM {deleted.name} '
            'WHERE table_name = :table AND "key" = ANY(:keys)'
        )
        for key, version, partition, offset in conn.execute(markers, {"table": mapping.table, "keys": keys}):
            stamp = Stamp(version, partition, offset)
            if key not in held or stamp.after(held[key].stamp):
                held[key] = Held(stamp, live=False)
        return held

    def _replace(self, conn: Connection, table: str, plan: Plan) -> None:
        """Upsert: drop the rows being replaced or deleted; flag soft-deleted ones in place."""
        name = quote(conn, table)
        gone = [row.key for row in (*plan.inserts, *plan.deleted)]
        if gone:
            conn.execute(text(f"DELETE FROM {name} WHERE _key = ANY(:keys)"), {"keys": gone})
        if plan.flagged:
            conn.execute(
                text(
                    f"UPDATE {name} SET _deleted = TRUE, _event_id = s.id, _event_type = 'tombstone', "
                    "_partition = s.p, _offset = s.n FROM (SELECT unnest(CAST(:k AS TEXT[])) AS k, "
                    "unnest(CAST(:id AS TEXT[])) AS id, unnest(CAST(:p AS BIGINT[])) AS p, "
                    f"unnest(CAST(:n AS BIGINT[])) AS n) s WHERE {name}._key = s.k"
                ),
                {
                    "k": [row.key for row in plan.flagged],
                    "id": [row.event_id for row in plan.flagged],
                    "p": [row.source.partition for row in plan.flagged],
                    "n": [row.source.offset for row in plan.flagged],
                },
            )

    def _close(self, conn: Connection, table: str, plan: Plan) -> None:
        """History: end the open version of each key that got a newer one or was deleted."""
        if plan.closes:
            name = quote(conn, table)
            conn.execute(
                text(
                    f"UPDATE {name} SET _valid_to = s.t FROM (SELECT unnest(CAST(:k AS TEXT[])) AS k, "
                    f"unnest(CAST(:t AS TIMESTAMPTZ[])) AS t) s "
                    f"WHERE {name}._key = s.k AND {name}._valid_to IS NULL"
                ),
                {"k": list(plan.closes), "t": list(plan.closes.values())},
            )

    def _remember_deleted(self, conn: Connection, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        last = {row.key: row for row in rows}  # delete, re-create, delete again: the last one counts
        conn.execute(
            text(f'DELETE FROM {deleted.name} WHERE table_name = :table AND "key" = ANY(:keys)'),
            {"table": table, "keys": list(last)},
        )
        markers = [
            (table, key, row.version, row.source.partition, row.source.offset) for key, row in last.items()
        ]
        self._loader.load(conn, deleted.name, MARKER_COLUMNS, markers)


def _tuples(mode: str, payload: Sequence[str], rows: list[Row], plan: Plan) -> list[tuple[Any, ...]]:
    """Load rows in the table's column order: outboxkit's columns (see `columns.metadata_columns`),
    then the payload's. Tuples, not dicts: this runs for every event."""
    made = []
    cell = columns.cell
    for row in rows:
        at = merge.event_time(row)
        source = row.source
        meta: tuple[Any, ...] = (
            row.key,
            row.event_id,
            row.event_type,
            row.version,
            row.schema_version,
            source.topic,
            source.partition,
            source.offset,
            at,
        )
        if mode == "upsert":
            meta = (*meta, row.delete)
        elif mode == "history":
            meta = (*meta, at, plan.valid_to.get(row.event_id))
        values = row.values
        made.append((*meta, *(cell(values.get(name)) for name in payload)))
    return made


def create_bookkeeping(engine: Engine, loader: Loader | None = None) -> None:
    """Create the sink's own tables if missing. Serialised among sinks: several starting at once
    on a new warehouse would otherwise race on CREATE TABLE (and lose with a unique violation)."""
    loader = loader or loader_for(engine.dialect.name, engine.driver)
    with engine.begin() as conn:
        loader.lock(conn, "bookkeeping")
        bookkeeping.create_all(conn)


def _load_catalog(conn: Connection, table: str | None = None) -> dict[str, TableSchema]:
    schemas = {}
    query = select(catalog.c.table_name, catalog.c.columns, catalog.c.schema_version)
    if table is not None:
        query = query.where(catalog.c.table_name == table)
    for row in conn.execute(query):
        kinds = {name: Kind(kind) for name, kind in json.loads(row.columns).items()}
        schemas[row.table_name] = TableSchema(kinds, row.schema_version)
    return schemas
