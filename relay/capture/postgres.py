"""Capture from PostgreSQL: draining snapshot deltas (the contract is in `relay.capture.source`).

Ids are handed out at insert, not at commit. Transaction A inserts id 5 and stays open, B inserts
id 6 and commits: a cursor at 6 skips 5 for ever. Ordering by transaction id does not help
either: ids are assigned at first write, so T1 may hold an older xid than T2 yet commit after it
(it waited for a row lock T2 held). So the source works with snapshots instead (the technique of
PostgreSQL's own `pg_snapshot` functions):

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

A database behind its checkpoint shows as its newest snapshot older than the checkpoint's; `check`
refuses that. (A restored database is noticed until it has run as many transactions as it lost.)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.types import UserDefinedType

from relay.capture import rows
from relay.capture.rows import OUTBOX, START_OVER, WIRE
from relay.capture.source import Backlog, Batch, Position
from relay.errors import UnsafeOutboxError
from relay.shards import ONLY, Shard

# Nothing is visible in it: where a source that never published starts.
_EMPTY_SNAPSHOT = "1:1:"


class PostgresCapture(rows.Polling):
    """Drains a PostgreSQL outbox snapshot delta by snapshot delta (see the module docstring).

    With a `shard`, only the rows of that shard: deltas are per shard, as are positions.
    """

    def __init__(self, engine: Engine, shard: Shard = ONLY) -> None:
        rows.expect_dialect(engine, "postgresql", "it reads transaction snapshots")
        self._engine = engine
        self._shard = shard
        self._checked = False

    def fetch(self, after: Position, limit: int) -> Batch:
        if not self._checked:  # later snapshots are checked as they are taken
            self.check(after)
            self._checked = True
        if after.target is None:  # a fresh source: the first delta is everything committed so far
            after = Position(base=after.base or _EMPTY_SNAPSHOT, target=self._snapshot(after))
        found = rows.read(self._engine, self._delta(after, limit))
        if not found:  # drained: the next delta starts where this one ended
            after = Position(base=after.target, target=self._snapshot(after))
            found = rows.read(self._engine, self._delta(after, limit))
        return Batch(rows.captured(found), replace(after, after_id=found[-1].id) if found else after)

    def delete_published(self, position: Position, limit: int, created_before: datetime | None) -> int:
        if position.base is None:
            return 0
        self.check(position)
        # Every transaction below the base snapshot's xmin was visible in it: published.
        published = OUTBOX.xid < _xmin(_snapshot_param("base", position.base))
        return rows.delete_oldest(self._engine, [published, *self._in_shard()], limit, created_before)

    def backlog(self, position: Position) -> Backlog:
        if position.base is None or position.target is None:
            return rows.backlog(self._engine, self._in_shard())
        base, target = _snapshot_param("base", position.base), _snapshot_param("target", position.target)
        published = or_(
            _visible_in(base),
            and_(_visible_in(target), OUTBOX.id <= position.after_id),
        )
        return rows.backlog(self._engine, [~published, *self._in_shard()])

    def check(self, position: Position) -> None:
        """A database's snapshots only move forward; one older than the checkpoint's is another
        database's past (a restored backup): the transactions it commits now count as published."""
        rows.expect_mode(position, "poll")
        self._snapshot(position)

    def _in_shard(self) -> list[ColumnElement[bool]]:
        if self._shard.count == 1:
            return []
        return [func.coalesce(OUTBOX.shard_key, 0) % self._shard.count == self._shard.index]

    def _snapshot(self, after: Position) -> str:
        """A new snapshot, refused if it is older than the one `after` drains up to."""
        snapshot = str(rows.read(self._engine, select(cast(func.pg_current_snapshot(), Text)))[0][0])
        reached = after.target or after.base
        if reached is not None and _xmax(snapshot) < _xmax(reached):
            raise UnsafeOutboxError(
                f"the database is behind the relay's checkpoint: its newest snapshot is {snapshot}, the "
                f"checkpoint reached {after} (the database was restored from a backup, or is another one "
                f"than this source's): rows committed now would count as published. {START_OVER}"
            )
        return snapshot

    def _delta(self, position: Position, limit: int) -> Select[Any]:
        base, target = _snapshot_param("base", position.base), _snapshot_param("target", position.target)
        query = select(*WIRE).where(
            # Cheap prefilter on the index: below the base's xmin everything was visible in it.
            OUTBOX.xid >= _xmin(base),
            ~_visible_in(base),
            _visible_in(target),
            OUTBOX.id > position.after_id,
        )
        return query.where(*self._in_shard()).order_by(OUTBOX.id).limit(limit)


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
    xid = cast(cast(OUTBOX.xid, Text), _PgType("xid8"))  # PostgreSQL has no bigint -> xid8 cast
    return func.pg_visible_in_snapshot(xid, snapshot)


def _xmax(snapshot: str) -> int:
    """The first transaction id not yet handed out when the snapshot (`xmin:xmax:xip,...`) was taken."""
    return int(snapshot.split(":")[1])


def _xmin(snapshot: ColumnElement[Any]) -> ColumnElement[int]:
    """The snapshot's oldest running transaction, as the bigint `outbox.xid` is compared with."""
    return cast(cast(func.pg_snapshot_xmin(snapshot), Text), BigInteger)
