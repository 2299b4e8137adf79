"""Capture sources: where the relay reads committed outbox rows from, and in what order.

A `CaptureSource` hands out committed outbox records batch by batch, each batch with the
`Position` after it. Two promises make a single checkpoint (the last position) sufficient:

* **gap-free**: every committed row is handed out once a position past it is reached — no row
  that commits later can turn up behind a position already handed out;
* **per-aggregate commit order**: the events of one aggregate come out in the order their
  transactions committed (which is the order of their `aggregateversion`).

How each database keeps them differs, which is why each dialect has its own source.

**SQLite** (`SqliteCapture`): one writer at a time holds the database from its first write to its
commit, so ids are handed out in commit order and `id > :last` is both promises at once — as long
as no id is handed out twice, which is why the outbox table uses AUTOINCREMENT.

**PostgreSQL** (`PostgresCapture`): ids are handed out at insert, not at commit. Transaction A
inserts id 5 and stays open, B inserts id 6 and commits: a cursor at 6 skips 5 for ever. Ordering
by transaction id does not help either: ids are assigned at first write, so T1 may hold an older
xid than T2 yet commit after it (it waited for a row lock T2 held). So the source works with
snapshots instead (the technique of PostgreSQL's own `pg_snapshot` functions):

1. It takes a snapshot, the *target*. The rows to publish are those whose writing transaction
   (`outbox.xid`) is visible in the target and was not visible in the previous snapshot, the
   *base* — exactly the transactions that committed in between. `pg_visible_in_snapshot` decides.
2. It drains that delta in id order, in batches; the position is (base, target, last id).
3. When the delta is empty it moves on: base := target, target := a new snapshot.

Gap-free: a later snapshot sees every transaction an earlier one saw, so the deltas partition all
committed transactions, and each delta is fixed (by its two snapshots) while it is drained. An
open transaction is simply in the target's list of running ones; it lands in the delta of the
first target taken after it commits — other transactions are not held back behind it.

Per-aggregate order: writers of one aggregate serialise on its `outbox_versions` row lock, held
to commit, and insert their outbox rows while holding it. So a later version's transaction
commits later — same delta or a later one — and, inside one delta, inserted (got its id) later.

Reading must happen on the primary: a standby's snapshots do not order commits the same way.

**A database behind its checkpoint.** Both promises assume the checkpoint describes this database.
One restored from a backup, or an outbox table recreated, hands out ids (SQLite) or transaction
ids (PostgreSQL) again that the checkpoint counts as published: their rows would be skipped, then
deleted by cleanup. `check` finds that — the id counter behind the checkpoint, the checkpoint's
own row holding another event, the database's newest snapshot older than the checkpoint's — and
raises `UnsafeOutboxError`; capture and cleanup call it, so such rows stop the relay and stay.
(On PostgreSQL a restored database is noticed until it has run as many transactions as it lost.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    column,
    delete,
    func,
    or_,
    select,
    table,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import UserDefinedType

from outbox.table import outbox_table
from relay.errors import CaptureError, UnsafeOutboxError
from relay.shards import ONLY, Shard
from wire import Envelope

_OUTBOX = outbox_table.c
# The columns that go on the wire, `created_at` among them (history validity); no more is fetched.
_WIRE = [
    _OUTBOX[name]
    for name in (
        "id", "event_id", "topic", "key", "payload", "type", "aggregatetype", "aggregateid",
        "aggregateversion", "schema_version", "headers", "created_at",
    )
]  # fmt: skip
# Nothing is visible in it: where a source that never published starts.
_EMPTY_SNAPSHOT = "1:1:"
# Where SQLite keeps the highest id an AUTOINCREMENT table ever handed out.
_SEQUENCE = table("sqlite_sequence", column("name"), column("seq"))
_MASTER = table("sqlite_master", column("type"), column("name"), column("sql"))
_START_OVER = (
    "Nothing was skipped or deleted. To publish them, run the relay under a new "
    "OUTBOXKIT_RELAY_SOURCE_ID: it starts from the beginning of this outbox, and the sink skips the "
    "events it has applied already"
)


@dataclass(frozen=True, slots=True)
class Position:
    """How far capture has come. `after_id`: the last id handed out (of the current delta, on
    PostgreSQL); `base` / `target`: the two snapshots bounding that delta (PostgreSQL only);
    `after_event_id`: the event of row `after_id` (SQLite only), by which capture recognises that
    id handed out again (None in checkpoints written before it was kept)."""

    after_id: int = 0
    base: str | None = None
    target: str | None = None
    after_event_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "after_id": self.after_id,
            "base": self.base,
            "target": self.target,
            "after_event_id": self.after_event_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Position:
        base, target, event = data.get("base"), data.get("target"), data.get("after_event_id")
        return cls(
            after_id=int(str(data.get("after_id", 0))),
            base=None if base is None else str(base),
            target=None if target is None else str(target),
            after_event_id=None if event is None else str(event),
        )

    def __str__(self) -> str:
        if self.target is None:
            return f"id {self.after_id}"
        return f"id {self.after_id} of the transactions visible in {self.target} but not in {self.base}"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """An outbox row read by the relay: the envelope to produce."""

    id: int
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Batch:
    """Records to publish, in order, and the position to checkpoint with them."""

    records: Sequence[OutboxRecord]
    position: Position


class CaptureSource(Protocol):
    """Reads committed outbox records. Implementations need not be thread-safe."""

    def fetch(self, after: Position, limit: int) -> Batch:
        """Up to `limit` records after `after`, and the position after them.

        An empty batch may still carry a new position (a source moving to its next snapshot);
        keeping it in memory without a checkpoint is safe. Raises `CaptureError` if the outbox
        cannot be read; the relay retries with backoff. Raises `UnsafeOutboxError` (see `check`).
        """
        ...

    def delete_published(self, position: Position, limit: int, created_before: datetime | None) -> int:
        """Delete up to `limit` rows published as of `position` (and older than `created_before`).

        Raises `UnsafeOutboxError`, deleting nothing, where `check` does."""
        ...

    def check(self, position: Position) -> None:
        """Raise `UnsafeOutboxError` if rows at or below `position` may never have been published
        (ids or transaction ids handed out again), naming them and what to do."""
        ...

    def backlog(self, position: Position) -> Backlog:
        """The committed rows not yet published as of `position`."""
        ...


@dataclass(frozen=True, slots=True)
class Backlog:
    rows: int
    oldest: datetime | None


class SqliteCapture:
    """Polls an SQLite outbox by id: with one writer at a time, id order is commit order."""

    def __init__(self, engine: Engine) -> None:
        _expect_dialect(engine, "sqlite", "polling by id on a multi-writer database skips rows")
        self._engine = engine
        self._table_checked = False

    def fetch(self, after: Position, limit: int) -> Batch:
        self.check(after)
        query = select(*_WIRE).where(_OUTBOX.id > after.after_id).order_by(_OUTBOX.id).limit(limit)
        rows = _read(self._engine, query)
        if not rows:
            return Batch([], after)
        return Batch(_records(rows), replace(after, after_id=rows[-1].id, after_event_id=rows[-1].event_id))

    def delete_published(self, position: Position, limit: int, created_before: datetime | None) -> int:
        self.check(position)
        return _delete(self._engine, [_OUTBOX.id <= position.after_id], limit, created_before)

    def backlog(self, position: Position) -> Backlog:
        return _backlog(self._engine, [_OUTBOX.id > position.after_id])

    def check(self, position: Position) -> None:
        """Ids never come back while the id counter is at or past the checkpoint and the checkpoint's
        row, until cleanup deletes it, holds the event published with it. One query per call."""
        self._check_table()
        if position.after_id == 0:
            return
        counter, at_checkpoint, highest = tuple(
            _read(
                self._engine,
                select(
                    select(_SEQUENCE.c.seq).where(_SEQUENCE.c.name == "outbox").scalar_subquery(),
                    select(_OUTBOX.event_id).where(_OUTBOX.id == position.after_id).scalar_subquery(),
                    select(func.max(_OUTBOX.id)).where(_OUTBOX.id <= position.after_id).scalar_subquery(),
                ),
            )[0]
        )
        if (counter or 0) < position.after_id:
            rows = "new rows get ids" if highest is None else f"outbox row {highest} is"
            why = f"the outbox's id counter is at {counter or 0}, behind it"
        elif position.after_event_id is not None and at_checkpoint not in (None, position.after_event_id):
            rows = f"outbox row {position.after_id} is"
            why = f"it holds event {at_checkpoint}, the checkpoint's is {position.after_event_id}"
        else:
            return
        raise UnsafeOutboxError(
            f"{rows} at or below the relay's checkpoint ({position}), never published: {why} (the table "
            f"was recreated, or the database restored from a backup). {_START_OVER}"
        )

    def _check_table(self) -> None:
        if self._table_checked:
            return
        definition = _read(
            self._engine, select(_MASTER.c.sql).where(_MASTER.c.type == "table", _MASTER.c.name == "outbox")
        )
        if not definition:
            return  # no table (yet): reading it fails with that, and is retried
        if "AUTOINCREMENT" not in str(definition[0][0]).upper():
            raise UnsafeOutboxError(
                "the outbox table was created without AUTOINCREMENT (by an older outboxkit): once cleanup "
                "has emptied it, SQLite hands its ids out again and the relay would skip those events. "
                "Run `outboxkit migrate --url URL`; tables made by outbox.metadata.create_all() are "
                "dropped and created again instead, once the relay has drained them"
            )
        self._table_checked = True


class PostgresCapture:
    """Drains a PostgreSQL outbox snapshot delta by snapshot delta (see the module docstring).

    With a `shard`, only the rows of that shard: deltas are per shard, as are positions.
    """

    def __init__(self, engine: Engine, shard: Shard = ONLY) -> None:
        _expect_dialect(engine, "postgresql", "it reads transaction snapshots")
        self._engine = engine
        self._shard = shard
        self._checked = False

    def fetch(self, after: Position, limit: int) -> Batch:
        if not self._checked:  # later snapshots are checked as they are taken
            self.check(after)
            self._checked = True
        if after.target is None:  # a fresh source: the first delta is everything committed so far
            after = Position(base=after.base or _EMPTY_SNAPSHOT, target=self._snapshot(after))
        rows = _read(self._engine, self._delta(after, limit))
        if not rows:  # drained: the next delta starts where this one ended
            after = Position(base=after.target, target=self._snapshot(after))
            rows = _read(self._engine, self._delta(after, limit))
        return Batch(_records(rows), replace(after, after_id=rows[-1].id) if rows else after)

    def delete_published(self, position: Position, limit: int, created_before: datetime | None) -> int:
        if position.base is None:
            return 0
        self.check(position)
        # Every transaction below the base snapshot's xmin was visible in it: published.
        published = _OUTBOX.xid < _xmin(_snapshot_param("base", position.base))
        return _delete(self._engine, [published, *self._in_shard()], limit, created_before)

    def backlog(self, position: Position) -> Backlog:
        if position.base is None or position.target is None:
            return _backlog(self._engine, self._in_shard())
        base, target = _snapshot_param("base", position.base), _snapshot_param("target", position.target)
        published = or_(
            _visible_in(base),
            and_(_visible_in(target), _OUTBOX.id <= position.after_id),
        )
        return _backlog(self._engine, [~published, *self._in_shard()])

    def check(self, position: Position) -> None:
        """A database's snapshots only move forward; one older than the checkpoint's is another
        database's past (a restored backup): the transactions it commits now count as published."""
        self._snapshot(position)

    def _in_shard(self) -> list[ColumnElement[bool]]:
        if self._shard.count == 1:
            return []
        return [func.coalesce(_OUTBOX.shard_key, 0) % self._shard.count == self._shard.index]

    def _snapshot(self, after: Position) -> str:
        """A new snapshot, refused if it is older than the one `after` drains up to."""
        snapshot = str(_read(self._engine, select(cast(func.pg_current_snapshot(), Text)))[0][0])
        reached = after.target or after.base
        if reached is not None and _xmax(snapshot) < _xmax(reached):
            raise UnsafeOutboxError(
                f"the database is behind the relay's checkpoint: its newest snapshot is {snapshot}, the "
                f"checkpoint reached {after} (the database was restored from a backup, or is another one "
                f"than this source's): rows committed now would count as published. {_START_OVER}"
            )
        return snapshot

    def _delta(self, position: Position, limit: int) -> Select[Any]:
        base, target = _snapshot_param("base", position.base), _snapshot_param("target", position.target)
        query = select(*_WIRE).where(
            # Cheap prefilter on the index: below the base's xmin everything was visible in it.
            _OUTBOX.xid >= _xmin(base),
            ~_visible_in(base),
            _visible_in(target),
            _OUTBOX.id > position.after_id,
        )
        return query.where(*self._in_shard()).order_by(_OUTBOX.id).limit(limit)


class _PgType(UserDefinedType[str]):
    """A PostgreSQL type SQLAlchemy does not know, named for a CAST."""

    cache_ok = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_col_spec(self, **kw: Any) -> str:
        return self.name


def _snapshot_param(name: str, snapshot: str | None) -> ColumnElement[Any]:
    """A snapshot in its text form (`xmin:xmax:xip,...`) as a bound `pg_snapshot`."""
    return cast(bindparam(name, snapshot, type_=Text), _PgType("pg_snapshot"))


def _visible_in(snapshot: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether the row's writing transaction is visible in `snapshot` (committed before it)."""
    xid = cast(cast(_OUTBOX.xid, Text), _PgType("xid8"))  # PostgreSQL has no bigint -> xid8 cast
    return func.pg_visible_in_snapshot(xid, snapshot)


def _xmax(snapshot: str) -> int:
    """The first transaction id not yet handed out when the snapshot (`xmin:xmax:xip,...`) was taken."""
    return int(snapshot.split(":")[1])


def _xmin(snapshot: ColumnElement[Any]) -> ColumnElement[int]:
    """The snapshot's oldest running transaction, as the bigint `outbox.xid` is compared with."""
    return cast(cast(func.pg_snapshot_xmin(snapshot), Text), BigInteger)


def capture_for(engine: Engine, shard: Shard = ONLY) -> CaptureSource:
    """The capture source for the engine's database (and one shard of it, on PostgreSQL)."""
    if engine.dialect.name == "postgresql":
        return PostgresCapture(engine, shard)
    if shard.count > 1:
        raise CaptureError("an SQLite outbox has one relay and one shard: set OUTBOXKIT_RELAY_SHARDS=1")
    return SqliteCapture(engine)


def _expect_dialect(engine: Engine, dialect: str, why: str) -> None:
    if engine.dialect.name != dialect:
        raise CaptureError(
            f"this capture source reads {dialect} only ({why}), not {engine.dialect.name}; "
            "outboxkit captures from SQLite and PostgreSQL"
        )


def _read(engine: Engine, query: Select[Any]) -> Sequence[Row[Any]]:
    try:
        with engine.connect() as conn:
            return conn.execute(query).all()
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot read the outbox table: {exc}") from exc


def _delete(
    engine: Engine, published: list[ColumnElement[bool]], limit: int, created_before: datetime | None
) -> int:
    """One bounded DELETE: short, and on published rows only, so writers never wait for it."""
    if created_before is not None:
        published = [*published, _OUTBOX.created_at < created_before]
    oldest = select(_OUTBOX.id).where(*published).order_by(_OUTBOX.id).limit(limit)
    try:
        with engine.begin() as conn:
            return conn.execute(delete(outbox_table).where(_OUTBOX.id.in_(oldest.scalar_subquery()))).rowcount
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot delete published outbox rows: {exc}") from exc


def _backlog(engine: Engine, unpublished: list[ColumnElement[bool]]) -> Backlog:
    query = select(func.count(), func.min(_OUTBOX.created_at)).where(*unpublished)
    try:
        with engine.connect() as conn:
            rows, oldest = conn.execute(query).one()
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot read the outbox table: {exc}") from exc
    return Backlog(int(rows), oldest)


def _records(rows: Sequence[Row[Any]]) -> list[OutboxRecord]:
    return [OutboxRecord(id=row.id, envelope=envelope_of(row)) for row in rows]


def envelope_of(row: Row[Any]) -> Envelope:
    """An outbox row as the envelope to produce: the one mapping from table to wire."""
    headers: dict[str, str] = {} if row.headers in (None, "", "{}") else json.loads(row.headers)
    return Envelope(
        event_id=row.event_id,
        topic=row.topic,
        key=None if row.key is None else row.key.encode(),
        payload=row.payload.encode(),
        event_type=row.type,
        aggregate_type=row.aggregatetype,
        aggregate_id=row.aggregateid,
        aggregate_version=row.aggregateversion,
        schema_version=row.schema_version,
        extra_headers=tuple((name, value.encode()) for name, value in headers.items()),
        created_at=_utc(row.created_at),
    )


def _utc(at: datetime) -> datetime:
    """SQLite hands back its UTC times without an offset; PostgreSQL with one."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
