"""The SQL `Warehouse`: DuckDB or PostgreSQL through SQLAlchemy, one transaction per batch.

That single transaction is the exactly-once argument on this side (the contract is in
`sink.warehouse`): the rows, the offsets after them (moved by compare-and-set, see `offsets`),
the dead letters, the delete markers and the column catalogue (`catalogue`) all commit together
or not at all, and a restarted sink resumes from the stored offsets. Within it, `merge` decides
which events are new, so replays and duplicates change nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from sink import columns, dead_letters, merge, names, offsets
from sink.catalogue import Catalogue, create_bookkeeping
from sink.columns import Kind
from sink.errors import RecordsRefusedError, WarehouseError
from sink.loaders import Loader, loader_for, quote
from sink.mapping import Row, TableMapping, TableSchema
from sink.merge import Held, Plan, Stamp
from sink.records import DeadLetter, Raw, Where
from sink.tables import deleted
from sink.warehouse import Batch, Outcome

log = logging.getLogger(names.LOGGER)
# A lakehouse refuses a commit that overlapped another's (see `Loader.conflicted`): the batch is
# planned again at once, up to this many times, pausing a random moment (up to 20 ms times the
# attempt) so that two sinks do not keep colliding; after that it is an outage the sink backs off on.
CONFLICT_ATTEMPTS = 20
CONFLICT_PAUSE = 0.02
T = TypeVar("T")
MARKER_COLUMNS = {
    "table_name": Kind.TEXT,
    "key": Kind.TEXT,
    "version": Kind.INTEGER,
    "partition": Kind.INTEGER,
    "offset": Kind.INTEGER,
}


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
        self._catalogue = Catalogue(self._loader, self._mappings)
        try:
            self._retrying_conflicts(lambda: create_bookkeeping(engine, self._loader))
            self._retrying_conflicts(self._prepare_tables)
        except SQLAlchemyError as exc:
            raise WarehouseError(f"cannot prepare the warehouse tables: {exc}") from exc

    def _prepare_tables(self) -> None:
        """Read the column catalogue, and give each table with a model all of its columns."""
        with self._engine.begin() as conn:
            self._catalogue.load(conn)
            for mapping in self._mappings.values():
                if mapping.model is not None:
                    self._catalogue.evolve_to_model(conn, mapping)

    @property
    def schemas(self) -> Mapping[str, TableSchema]:
        return self._catalogue.schemas

    def stored_offsets(self, group_id: str, topics: Iterable[str]) -> dict[Where, int]:
        try:
            with self._engine.connect() as conn:
                return offsets.load(conn, group_id, topics)
        except SQLAlchemyError as exc:
            raise WarehouseError(f"cannot read the stored offsets ({type(exc).__name__}): {exc}") from exc

    def write(self, group_id: str, batch: Batch) -> Outcome:
        try:
            outcome = self._retrying_conflicts(lambda: self._write(group_id, batch))
        except SQLAlchemyError as exc:
            raise WarehouseError(
                f"the warehouse rejected a batch ({type(exc).__name__}): {exc}",
                data=self._loader.refused_data(getattr(exc, "orig", exc)),
            ) from exc
        self._catalogue.committed(batch.schemas)
        return outcome

    def _retrying_conflicts(self, attempt: Callable[[], T]) -> T:
        """`attempt()`, again while its commit conflicts with another writer's (`Loader.conflicted`):
        each attempt is its own transaction, planned from what is committed when it starts."""
        for number in range(1, CONFLICT_ATTEMPTS):
            try:
                return attempt()
            except SQLAlchemyError as exc:
                if not self._loader.conflicted(getattr(exc, "orig", exc)):
                    raise
            time.sleep(random.uniform(0, CONFLICT_PAUSE * number))  # noqa: S311 - not a secret
        return attempt()

    def _write(self, group_id: str, batch: Batch) -> Outcome:
        """One attempt: plan and apply the batch in one transaction, from what is committed now."""
        outcome = Outcome()
        with self._engine.begin() as conn:
            self._loader.guard(conn)
            offsets.advance(conn, group_id, batch.moves)
            for table, working in batch.schemas.items():
                self._catalogue.ensure(conn, self._mappings[table], working)
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
            dead_letters.store(conn, group_id, outcome.dead_letters)
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
                self._catalogue.load(conn)
        except SQLAlchemyError as exc:
            log.warning("catalogue not re-read (%s); the next batch tries again", exc)

    def _apply(self, conn: Connection, mapping: TableMapping, working: TableSchema, rows: list[Row]) -> Plan:
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
        unheld = list(self._unheld(working, plan.inserts))
        if unheld:  # the batch is rolled back and settled again without them: load nothing now
            plan.dead.extend(unheld)
            return plan
        all_columns = columns.metadata_columns(mapping.mode) | working.columns
        rows_in_order = _tuples(mapping.mode, list(working.columns), plan.inserts, plan)
        self._loader.load(conn, table, all_columns, rows_in_order)
        self._remember_deleted(conn, table, plan.deleted)
        return plan

    def _unheld(self, working: TableSchema, rows: list[Row]) -> Iterator[DeadLetter]:
        """Rows with a value their numeric column would round or refuse, as refusals that say so
        (the batch is rolled back and they are settled as dead letters, per policy)."""
        numeric = [name for name, kind in working.columns.items() if kind is Kind.NUMERIC]
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
