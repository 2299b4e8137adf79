"""`outboxkit relay status`: what an operator asks first — is anything stuck, lost or waiting?

Everything is read from the sources of truth, not from a running relay: checkpoints from Kafka
(read_committed, as a restarted relay would), backlog and dead letters from the outbox database,
lease holders from PostgreSQL's lock table. So it works when no relay is running — which is when
it is needed most.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, create_engine, func, select

from outbox.table import dead_letters_table, outbox_table
from relay.capture import Backlog, CaptureSource, Position, capture_for
from relay.checkpoint import Checkpoints
from relay.errors import UnsafeOutboxError
from relay.leases import holders
from relay.settings import RelaySettings
from relay.shards import Shard


@dataclass(frozen=True)
class ShardStatus:
    shard: str
    checkpoint: str
    backlog: int
    oldest_unpublished: datetime | None
    lease_holder: str | None
    problem: str | None = None  # rows at or below the checkpoint never published (`UnsafeOutboxError`)


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
        return sum(shard.backlog for shard in self.shards)

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
            lines.append(
                f"  {shard.shard}: {shard.backlog} waiting{age}; lease: {shard.lease_holder or 'nobody'}; "
                f"checkpoint: {shard.checkpoint}"
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


def relay_status(settings: RelaySettings, *, dead_letters_shown: int = 5) -> RelayStatus:
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        shards = [
            _shard_status(settings, engine, Shard(index, settings.shards)) for index in range(settings.shards)
        ]
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                held = holders(conn, settings.source_id)
            shards = [
                ShardStatus(**(asdict(status) | {"lease_holder": held.get(index)}))
                for index, status in enumerate(shards)
            ]
        dead_letters, latest, without_xid = _dead_letters_and_strays(engine, dead_letters_shown)
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
    capture = capture_for(engine, shard)
    backlog: Backlog = capture.backlog(position)
    holder = "this process (SQLite has one relay)" if engine.dialect.name == "sqlite" else None
    return ShardStatus(
        str(shard), str(position), backlog.rows, backlog.oldest, holder, _problem(capture, position)
    )


def _problem(capture: CaptureSource, position: Position) -> str | None:
    """What stops the relay of this shard for good, if anything: the backlog alone would miss it."""
    try:
        capture.check(position)
    except UnsafeOutboxError as exc:
        return str(exc)
    return None


def _dead_letters_and_strays(engine: Engine, shown: int) -> tuple[int, list[DeadLetter], int]:
    d = dead_letters_table.c
    with engine.connect() as conn:
        count = int(conn.execute(select(func.count()).select_from(dead_letters_table)).scalar_one())
        rows = conn.execute(
            select(d.id, d.event_id, d.type, d.reason, d.dead_lettered_at)
            .order_by(d.dead_lettered_at.desc())
            .limit(shown)
        ).all()
        strays = 0
        if engine.dialect.name == "postgresql":
            strays = int(
                conn.execute(
                    select(func.count()).select_from(outbox_table).where(outbox_table.c.xid.is_(None))
                ).scalar_one()
            )
    return count, [DeadLetter(*row) for row in rows], strays
