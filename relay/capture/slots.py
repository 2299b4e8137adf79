"""What a WAL source's replication slot looks like from the server, read-only: for the relay's
metrics, `outboxkit relay status` (which must never create a slot) and the checks that refuse a
slot that cannot continue a checkpoint.

Pure SQL over `pg_replication_slots`; no replication connection, so nothing here needs psycopg2.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from relay.capture.source import lsn_text
from relay.errors import CaptureError
from relay.shards import ONLY, Shard

LSN = "({} - '0/0'::pg_lsn)::bigint"  # an LSN as the bigint positions hold
# `wal_status` of a slot PostgreSQL invalidated (`max_slot_wal_keep_size` exceeded): it can never
# stream again, the WAL it needed is gone.
LOST = "lost"
MISSING = "the slot was missing (dropped, or another database): rows committed meanwhile were not kept"


def slot_name(source_id: str, shard: Shard = ONLY) -> str:
    """The slot's and publication's name for a source's shard: stable (derived, never random, as
    the relay that takes the shard over must find them), within PostgreSQL's 63 characters and
    its [a-z0-9_] for slots; the digest keeps ids that differ only in case or punctuation apart."""
    readable = re.sub(r"[^a-z0-9]+", "_", source_id.lower())[:32]
    digest = hashlib.sha256(source_id.encode()).hexdigest()[:8]
    shard_part = "" if shard.count == 1 else f"_{shard.index}of{shard.count}"
    return f"outboxkit_{readable}_{digest}{shard_part}"


@dataclass(frozen=True, slots=True)
class SlotState:
    """A slot as `pg_replication_slots` shows it. `lag_bytes`: the WAL between its confirmed
    position and the server's WAL end, which the server keeps for it (what a stuck relay costs);
    `wal_status` is `reserved`, `extended`, `unreserved` (about to be lost) or `lost`."""

    name: str
    active: bool
    wal_status: str | None
    confirmed_lsn: int | None
    server_lsn: int

    @property
    def lag_bytes(self) -> int | None:
        return None if self.confirmed_lsn is None else max(0, self.server_lsn - self.confirmed_lsn)

    @property
    def lost(self) -> bool:
        return self.wal_status == LOST


def slot_state(engine: Engine, name: str) -> SlotState | None:
    """Slot `name` as the server sees it now; None if there is no such slot."""
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    f"select active, wal_status, {LSN.format('confirmed_flush_lsn')}, "  # noqa: S608
                    f"{LSN.format('pg_current_wal_lsn()')} from pg_replication_slots where slot_name = :slot"
                ),
                {"slot": name},
            ).first()
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot read replication slot {name}: {exc}") from exc
    if found is None:
        return None
    active, wal_status, confirmed, server = found
    return SlotState(
        name, bool(active), wal_status, None if confirmed is None else int(confirmed), int(server)
    )


def slot_problem(
    current: int, confirmed: int | None, created: bool, checkpoint: int, streamed: bool
) -> str | None:
    """What keeps the slot from continuing `checkpoint`, if anything. A slot confirmed past it
    is a problem only for a source about to stream from it (`streamed` False, with the checkpoint
    just read from Kafka); after that, only a successor that took the shard over confirms it
    further, and the relay's leases and fencing stop this one."""
    if current < checkpoint:
        return f"the database's WAL ends at {lsn_text(current)}, before it (restored from a backup?)"
    if confirmed is None or created:
        return MISSING
    if confirmed > checkpoint and not streamed:
        return f"the slot is confirmed up to {lsn_text(confirmed)}, past it: rows in between may be skipped"
    return None
