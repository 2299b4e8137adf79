"""`outboxkit relay status`: what an operator asks first — is anything stuck, lost or waiting?

Everything is read from the sources of truth, not from a running relay: checkpoints from Kafka
(read_committed, as a restarted relay would), backlog and dead letters from the outbox database,
lease holders from PostgreSQL's lock table. So it works when no relay is running — which is when
it is needed most.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from outbox.table import dead_letters_table, outbox_table
from relay.capture import Backlog, CaptureSource, Position, capture_for, rows
from relay.capture.slots import MISSING, SlotState, slot_name, slot_problem, slot_state
from relay.checkpoint import Checkpoints
from relay.errors import SlotInvalidatedError, UnsafeOutboxError
from relay.leases import holders
from relay.settings import RelaySettings
from relay.shards import Shard
from runtime import urls


@dataclass(frozen=True)
class SlotStatus:
    """A WAL source shard's replication slot: `lag_bytes` is the WAL the server keeps for it;
    `wal_status` None when there is no such slot."""

    name: str
    active: bool
    wal_status: str | None
    lag_bytes: int | None


@dataclass(frozen=True)
class ShardStatus:
    shard: str
    checkpoint: str
    backlog: int | None  # None for a WAL source: only streaming the slot would count its rows
    oldest_unpublished: datetime | None
    lease_holder: str | None
    problem: str | None = None  # rows at or below the checkpoint never published (`UnsafeOutboxError`)
    slot: SlotStatus | None = None  # WAL sources only


@dataclass(frozen=True)
class DeadLetter:
    id: int
    event_id: str
    type: str
    reason: str
    dead_lettered_at: datetime


@dataclass(frozen=True)
class RelayStatus:
    source_id: str
    shards: list[ShardStatus]
    dead_letters: int
    latest_dead_letters: list[DeadLetter]
    without_xid: int  # PostgreSQL rows written around outboxkit: the relay cannot order them

    leases: bool = True  # False on SQLite: one relay, no lease to hold

    @property
    def backlog(self) -> int:
        return sum(shard.backlog or 0 for shard in self.shards)

    @property
    def unheld(self) -> list[str]:
        """Shards no live relay holds: their events wait (too few relays for the shards, or
        `max_shards` set too low)."""
        return [shard.shard for shard in self.shards if self.leases and shard.lease_holder is None]

    def to_json(self) -> str:
        return json.dumps(
            asdict(self) | {"backlog": self.backlog, "unheld": self.unheld}, default=str, indent=2
        )

    def render(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        stopped = sum(shard.problem is not None for shard in self.shards)
        lines = [
            f"source {self.source_id}: {self.backlog} event(s) waiting, {self.dead_letters} dead letter(s)"
            + (f", {stopped} shard(s) STOPPED with events never published" if stopped else "")
        ]
        for shard in self.shards:
            age = (
                f", oldest {(now - shard.oldest_unpublished).total_seconds():.1f}s old"
                if shard.oldest_unpublished
                else ""
            )
            waiting = "?" if shard.backlog is None else shard.backlog
            lines.append(
                f"  {shard.shard}: {waiting} waiting{age}; lease: {shard.lease_holder or 'nobody'}; "
                f"checkpoint: {shard.checkpoint}" + _slot_line(shard.slot)
            )
        lines += [f"  STOPPED {shard.shard}: {shard.problem}" for shard in self.shards if shard.problem]
        lines += [
            f"  dead letter #{d.id} {d.type} ({d.event_id}) at {d.dead_lettered_at:%Y-%m-%d %H:%M}: "
            + d.reason
            for d in self.latest_dead_letters
        ]
        if self.unheld:
            lines.append(
                f"  WARNING: {len(self.unheld)} of {len(self.shards)} shard(s) held by no relay "
                f"({', '.join(self.unheld)}): their events wait. Run at least as many relays as "
                "shards / OUTBOXKIT_RELAY_MAX_SHARDS (an app replica each, when the relay is its sidecar)"
            )
        if self.without_xid:
            lines.append(
                f"  WARNING: {self.without_xid} outbox row(s) have no xid (written without outboxkit): "
                "they will never be published; write them with outbox.publish()"
            )
        return "\n".join(lines)


def _slot_line(slot: SlotStatus | None) -> str:
    if slot is None:
        return ""
    if slot.wal_status is None:
        return f"; slot {slot.name}: MISSING"
    lag = "?" if slot.lag_bytes is None else f"{slot.lag_bytes} bytes of WAL held"
    return f"; slot {slot.name}: {'active' if slot.active else 'inactive'}, {slot.wal_status}, {lag}"


def relay_status(settings: RelaySettings, *, dead_letters_shown: int = 5) -> RelayStatus:
    engine = urls.engine(settings.database_url.get_secret_value())
    try:
        shards = [
            _shard_status(settings, engine, Shard(index, settings.shards)) for index in range(settings.shards)
        ]
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                held = holders(conn, settings.source_id)
            shards = [replace(status, lease_holder=held.get(index)) for index, status in enumerate(shards)]
        dead_letters, latest, without_xid = _dead_letters_and_strays(
            engine, dead_letters_shown, strays=settings.capture == "poll"
        )
    finally:
        engine.dispose()
    return RelayStatus(
        settings.source_id,
        shards,
        dead_letters,
        latest,
        without_xid,
        leases=engine.dialect.name == "postgresql",
    )


def _shard_status(settings: RelaySettings, engine: Engine, shard: Shard) -> ShardStatus:
    position: Position = Checkpoints(
        settings.kafka, settings.checkpoint_topic, settings.source_id, shard
    ).read()
    if settings.capture == "wal":
        return _wal_shard_status(engine, settings.source_id, shard, position)
    capture = capture_for(engine, shard)
    backlog: Backlog = capture.backlog(position)
    holder = "this process (SQLite has one relay)" if engine.dialect.name == "sqlite" else None
    return ShardStatus(
        str(shard), str(position), backlog.rows, backlog.oldest, holder, _problem(capture, position)
    )


def _wal_shard_status(engine: Engine, source_id: str, shard: Shard, position: Position) -> ShardStatus:
    """A WAL source's shard, from its slot as the server shows it: read-only, status creates no
    slot (a relay does, at start), and streams none (that would take it from a running relay)."""
    rows.expect_mode(position, "wal")
    name = slot_name(source_id, shard)
    state = slot_state(engine, name)
    if state is None:  # no relay started yet (nothing to continue), or the slot was dropped
        problem = None if position.lsn is None else f"replication slot {name}: {MISSING}"
        slot = SlotStatus(name, False, None, None)
    else:
        problem, slot = (
            _wal_problem(state, position),
            SlotStatus(name, state.active, state.wal_status, state.lag_bytes),
        )
    return ShardStatus(str(shard), str(position), None, None, None, problem, slot)


def _wal_problem(state: SlotState, position: Position) -> str | None:
    if state.lost:
        return str(SlotInvalidatedError(state.name))
    if position.lsn is None:
        return None
    return slot_problem(state.server_lsn, state.confirmed_lsn, False, position.lsn, False)


def _problem(capture: CaptureSource, position: Position) -> str | None:
    """What stops the relay of this shard for good, if anything: the backlog alone would miss it."""
    try:
        capture.check(position)
    except UnsafeOutboxError as exc:
        return str(exc)
    return None


def _dead_letters_and_strays(
    engine: Engine, shown: int, *, strays: bool
) -> tuple[int, list[DeadLetter], int]:
    """The dead letters, and with `strays` the rows without xid (which polling never captures;
    the log does)."""
    d = dead_letters_table.c
    with engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(dead_letters_table)).scalar_one())
        found = conn.execute(
            select(d.id, d.event_id, d.type, d.reason, d.dead_lettered_at)
            .order_by(d.dead_lettered_at.desc())
            .limit(shown)
        ).all()
        without_xid = 0
        if strays and engine.dialect.name == "postgresql":
            without_xid = int(
                conn.execute(
                    select(func.count()).select_from(outbox_table).where(outbox_table.c.xid.is_(None))
                ).scalar_one()
            )
    return count, [DeadLetter(*row) for row in found], without_xid
