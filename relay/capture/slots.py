"""A WAL source's replication slots and publications on the server: their names, what
`pg_replication_slots` shows of them (for the relay's metrics, `outboxkit relay status`, which
must never create a slot, and the checks that refuse a slot that cannot continue a checkpoint),
and creating and dropping them (the relay at start, `outboxkit migrate`, `relay drop-slot`).

Plain SQL: no replication connection, so nothing here needs psycopg2 (the `wal` extra).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from relay.capture.source import lsn_text
from relay.errors import CaptureError
from relay.shards import ONLY, Shard

LSN = "({} - '0/0'::pg_lsn)::bigint"  # an LSN as the bigint positions hold
# `wal_status` of a slot PostgreSQL invalidated (`max_slot_wal_keep_size` exceeded): it can never
# stream again, the WAL it needed is gone.
LOST = "lost"
RESET_SLOT = (
    "Nothing was skipped or deleted. Stop the source's relays and run `outboxkit relay reset-slot --yes`: "
    "it recreates the slot and publishes from the outbox table what is not in Kafka yet"
)
FAILOVER_VERSION = 170000  # server_version_num from which slots can be failover slots
_PRIVILEGES = " (the role needs REPLICATION, and to own the outbox table for the publication)"
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


def ensure_publication(engine: Engine, name: str, shard: Shard) -> None:
    """Create the publication of a source's shard if missing: the outbox table's inserts, with
    shards only those of the shard's rows (the row filter). Its role must own the outbox table."""
    try:
        _create_publication(engine, name, shard)
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot create publication {name}: {exc}{_PRIVILEGES}") from exc


def _create_publication(engine: Engine, name: str, shard: Shard) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        table = conn.execute(
            text(
                "select format('%I.%I', n.nspname, c.relname) from pg_class c "
                "join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass('outbox')"
            )
        ).scalar()
        if table is None:
            raise CaptureError("no outbox table on this database's search path: run `outboxkit migrate`")
        if conn.execute(text("select 1 from pg_publication where pubname = :name"), {"name": name}).first():
            return
        where = "" if shard.count == 1 else f" where (coalesce(shard_key, 0) % {shard.count} = {shard.index})"
        conn.execute(
            text(f"create publication \"{name}\" for table {table}{where} with (publish = 'insert')")
        )


def ensure_slot(engine: Engine, name: str, shard: Shard) -> bool:
    """Create the publication, then the slot, if missing (in that order: pgoutput reads the
    publication as of each change); whether the slot was created."""
    ensure_publication(engine, name, shard)
    if slot_state(engine, name) is not None:
        return False
    create_slot(engine, name)
    return True


def prepare_source(engine: Engine, source_id: str, shards: int) -> list[str]:
    """Create what the relays of a WAL source need, if missing — each shard's publication and slot —
    ahead of them (`outboxkit migrate --wal-source`): rows committed from now on are captured,
    and the relays' role then needs no ownership of the outbox table. Returns the slots created."""
    made = [slot_name(source_id, Shard(index, shards)) for index in range(shards)]
    return [name for index, name in enumerate(made) if ensure_slot(engine, name, Shard(index, shards))]


def create_slot(engine: Engine, name: str) -> None:
    """Create logical replication slot `name` (pgoutput). On PostgreSQL 17 and later it is a
    failover slot: standbys that synchronize slots keep a copy a promoted one goes on from.

    Waits for the transactions running now to end: the slot starts where no open one began earlier.
    """
    try:
        # The arguments after the plugin: temporary, two-phase, failover.
        options = ", false, false, true" if failover_slots(engine) else ""
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            create = f"select pg_create_logical_replication_slot(:slot, 'pgoutput'{options})"
            conn.execute(text(create), {"slot": name})
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot create replication slot {name}: {exc}{_PRIVILEGES}") from exc


def failover_slots(engine: Engine) -> bool:
    """Whether the server has failover slots (PostgreSQL 17+)."""
    with engine.connect() as conn:
        return int(conn.execute(text("show server_version_num")).scalar_one()) >= FAILOVER_VERSION


def drop_slot(engine: Engine, source_id: str, shard: Shard = ONLY, *, publication: bool = True) -> None:
    """Drop a source shard's slot and (with `publication`) its publication, ending the connection
    streaming it if any: its WAL is released, and what it had not published is never captured."""
    name = slot_name(source_id, shard)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        end_streaming(conn, name)
        conn.execute(
            text(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = :slot"
            ),
            {"slot": name},
        )
        if publication:
            conn.execute(text(f'drop publication if exists "{name}"'))


def end_streaming(conn: Connection, slot: str) -> bool:
    """End the connection streaming `slot`, if any; whether there was one."""
    ended = conn.execute(
        text(
            # With a timeout it waits until the walsender has exited (PostgreSQL 14+): without one
            # it only signals, and what comes next may find the slot still active (seen).
            "select pg_terminate_backend(active_pid, 10000) from pg_replication_slots "
            "where slot_name = :slot and active_pid is not null"
        ),
        {"slot": slot},
    ).first()
    return ended is not None
