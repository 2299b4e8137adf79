"""The dedupe rules: which events of a batch change a table, decided before any SQL runs.

An event applies only if it is newer than what the table holds for its key: by per-aggregate
version when both sides have one (so a duplicate that reached Kafka at a new offset changes
nothing, and an older version never overwrites a newer row), else by offset within the partition.
What the table holds includes keys it deleted (`outboxkit_sink_deleted`), so a replayed create
cannot bring a deleted row back.

Because the newest version wins, a record claiming a version far above the stored one would win
for good: every genuine update after it would look like a duplicate. So a version more than
`max_version_jump` above what the table holds for the key is refused (a dead letter or a stop,
per policy) instead. Where the table holds no version for the key there is nothing to measure
against: the first event a table sees of a key may legitimately be any version (retention,
a new table); signed envelopes (`wire.signing`) are what guards that case.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from sink.mapping import Row
from sink.records import UNTRUSTED, DeadLetter, Raw

# Versions a table may skip between two events of a key before the later one is refused. Gaps are
# normal for a table that takes only some of an aggregate's event types (`event_types`); ten
# thousand other events between two it takes is rare, while a forger has no reason to stay below.
MAX_VERSION_JUMP = 10_000


@dataclass(slots=True)  # built per event: a frozen one costs ~5x to make; never mutated
class Stamp:
    """The position of the last change a table applied for a key."""

    version: int | None
    partition: int
    offset: int

    @classmethod
    def of(cls, row: Row) -> Stamp:
        return cls(row.version, row.source.partition, row.source.offset)

    def after(self, other: Stamp) -> bool:
        """Whether this change comes after `other` for the same key."""
        return _later(self.version, self.partition, self.offset, other)


@dataclass(slots=True)  # built per event: a frozen one costs ~5x to make; never mutated
class Held:
    """What the table holds for a key: the last change applied, and whether a live row exists."""

    stamp: Stamp
    live: bool


def newer(row: Row, held: Held | None) -> bool:
    """Whether `row` comes after what the table holds (no Stamp built: this runs per event)."""
    return held is None or _later(row.version, row.source.partition, row.source.offset, held.stamp)


def _later(version: int | None, partition: int, offset: int, than: Stamp) -> bool:
    """By version when both sides have one; else by offset. A different partition means the topic
    was repartitioned, and the later record is the one to keep."""
    if version is not None and than.version is not None:
        return version > than.version
    return partition != than.partition or offset > than.offset


def event_time(row: Row) -> datetime.datetime:
    """When the event was written to the outbox (`outboxkit-created-at`): a version's validity runs
    from it to the next version's, however late either was published. Records without it (Kafka
    tombstones, outboxkit before the header, other producers) fall back to the record's timestamp,
    the time it was produced."""
    if row.created_at is not None:
        return row.created_at
    return datetime.datetime.fromtimestamp(row.source.timestamp_ms / 1000, datetime.UTC)


@dataclass
class Plan:
    """What one batch does to one table."""

    inserts: list[Row] = field(default_factory=list)
    deleted: list[Row] = field(default_factory=list)  # keys removed (hard) or closed (history)
    flagged: list[Row] = field(default_factory=list)  # soft-deleted by tombstone: flag the table's row
    closes: dict[str, datetime.datetime] = field(default_factory=dict)  # history: key -> valid_to
    valid_to: dict[str, datetime.datetime] = field(default_factory=dict)  # history: event id -> valid_to
    applied: int = 0
    skipped: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


def _changes(
    plan: Plan, table: str, rows: Iterable[Row], state: Mapping[str, Held], max_jump: int
) -> Iterator[tuple[Row, Held | None]]:
    """The rows that change the table, each with what the table held before it. Counts the
    others as skipped, or refuses them (a version jump, a tombstone for a key never held).
    `state` is read as the caller updates it, row by row."""
    for row in rows:
        before = state.get(row.key)
        if not newer(row, before):
            plan.skipped += 1
        elif max_jump and before is not None and _jump(row, before) > max_jump:
            reason = (
                f"{UNTRUSTED}version {row.version} of key {row.key!r} is {_jump(row, before)} above the "
                f"version {before.stamp.version} table {table} holds (max_version_jump={max_jump}); "
                "applied, it would make every later genuine update of the key look like a duplicate. "
                "If it is genuine (a table taking few of the aggregate's event types, records given up "
                "with `sink skip`), raise OUTBOXKIT_SINK_MAX_VERSION_JUMP (0: no limit), restart and "
                "`outboxkit sink replay`"
            )
            plan.dead.append(DeadLetter(row.source, Raw(row.key.encode(), None, ()), reason, row.event_id))
        elif row.tombstone and not (before is not None and before.live):
            _refuse_or_skip(plan, row, table, before)
        else:
            plan.applied += 1
            yield row, before


def _jump(row: Row, before: Held) -> int:
    """How far `row`'s version is above the held one; 0 when either side has none."""
    if row.version is None or before.stamp.version is None:
        return 0
    return row.version - before.stamp.version


def _refuse_or_skip(plan: Plan, row: Row, table: str, before: Held | None) -> None:
    """A tombstone for a key with no live row: already deleted (the usual delete event followed
    by a tombstone) is nothing to do; a key the table never held is refused with a reason."""
    if before is not None:
        plan.skipped += 1
        return
    plan.dead.append(
        DeadLetter(
            row.source,
            Raw(row.key.encode(), None, ()),
            f"tombstone for key {row.key!r}, which table {table} does not hold",
            row.event_id,
        )
    )


def plan_upsert(
    table: str, rows: Iterable[Row], held: Mapping[str, Held], *, soft: bool, max_jump: int = MAX_VERSION_JUMP
) -> Plan:
    """Current state per key: the newest change wins; deletes remove (hard) or flag (soft) the row."""
    plan = Plan()
    state = dict(held)
    final: dict[str, Row] = {}
    for row, _ in _changes(plan, table, rows, state, max_jump):
        change = _as_soft_delete(final[row.key], row) if row.tombstone and soft and row.key in final else row
        state[row.key] = Held(Stamp.of(change), live=soft or not change.delete)
        final[row.key] = change
    for row in final.values():
        if row.tombstone and soft:
            plan.flagged.append(row)
        elif row.delete and not soft:
            plan.deleted.append(row)
        else:
            plan.inserts.append(row)
    return plan


def _as_soft_delete(last: Row, tombstone: Row) -> Row:
    """A tombstone after an insert in the same batch: keep the inserted values, flagged deleted."""
    return Row(
        source=tombstone.source,
        key=tombstone.key,
        event_id=tombstone.event_id,
        event_type=tombstone.event_type,
        version=last.version,
        schema_version=last.schema_version,
        delete=True,
        tombstone=False,
        values=last.values,
        created_at=tombstone.created_at,
    )


def plan_append(rows: Iterable[Row], stored_ids: set[str]) -> Plan:
    """The event log: every event once, by event id."""
    plan = Plan()
    seen = set(stored_ids)
    for row in rows:
        if row.event_id in seen:
            plan.skipped += 1
            continue
        seen.add(row.event_id)
        plan.applied += 1
        plan.inserts.append(row)
    return plan


def plan_history(
    table: str, rows: Iterable[Row], held: Mapping[str, Held], *, max_jump: int = MAX_VERSION_JUMP
) -> Plan:
    """Versions with validity: each new version closes the key's open one at its event time."""
    plan = Plan()
    state = dict(held)
    open_in_batch: dict[str, Row] = {}
    for row, before in _changes(plan, table, rows, state, max_jump):
        if before is not None and before.live:
            _close(plan, open_in_batch, row.key, event_time(row))
        state[row.key] = Held(Stamp.of(row), live=not row.delete)
        if row.delete:
            plan.deleted.append(row)
        else:
            plan.inserts.append(row)
            open_in_batch[row.key] = row
    return plan


def _close(plan: Plan, open_in_batch: dict[str, Row], key: str, at: datetime.datetime) -> None:
    current = open_in_batch.pop(key, None)
    if current is not None:
        plan.valid_to[current.event_id] = at
    else:
        plan.closes.setdefault(key, at)
