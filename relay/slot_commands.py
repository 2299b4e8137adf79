"""`outboxkit relay reset-slot` and `drop-slot`: the operator's commands for a WAL source's
replication slots. Both hold the shards' leases while they work, and refuse while a relay runs.

`drop-slot` retires a source: its slots and publications are dropped, their WAL released.

`reset-slot`: a WAL source goes on after PostgreSQL invalidated (or someone dropped) a shard's
replication slot, with nothing lost and nothing published twice.

A lost slot cannot tell which rows committed after its confirmed position: that WAL is gone. The
outbox table still holds those rows (cleanup deletes only rows it saw published), and also rows
already in Kafka that cleanup had not deleted yet. Nothing in the table tells the two apart — the
checkpoint is a commit LSN, and a row does not carry its own — but the event ids in Kafka do. So,
for each such shard, holding the shard's lease and with its earlier relays fenced (its
transactional id registered before the checkpoint is read):

1. the slot is created anew on a replication connection that exports its snapshot: the rows
   visible in that snapshot are exactly those committed before the slot's consistent point, and
   the slot streams exactly those committed after it (how logical replication copies a table
   before it streams it);
2. the shard's rows in that snapshot whose event ids are not in their topics (read back
   read_committed, each topic whole) are published, in per-aggregate version order;
3. the last of those Kafka transactions moves the checkpoint to the slot's consistent point. The
   ones before carry the old checkpoint, so a reset cut short leaves a relay refusing to start
   (the slot is confirmed past its checkpoint), and running it again finds in Kafka what the first
   run published.

What it costs: every topic the shard's remaining rows go to is read from the start of its
retention, and the rows are read once, in one REPEATABLE READ transaction (which holds back
vacuum meanwhile). A row whose event Kafka's retention deleted already is published again: the
sink keeps the newer version, so it changes nothing there. Events written as logical messages
(table-less writes) are not recovered: they were in the lost WAL only, never in the table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text

from relay import names
from relay.capture import Position, rows
from relay.capture.rows import OUTBOX, WIRE
from relay.capture.slots import drop_slot, ensure_publication, failover_slots, slot_name, slot_state
from relay.capture.wal import replication_connection
from relay.checkpoint import Checkpoints
from relay.errors import RelayError
from relay.leases import AdvisoryLeases
from relay.publisher import TransactionalPublisher
from relay.run import transactional_id
from relay.settings import RelaySettings
from relay.shards import Shard
from relay.topics import published_event_ids
from runtime import urls
from runtime.kafka import KafkaSettings
from wire import Envelope

log = logging.getLogger(names.LOGGER)
_SNAPSHOT = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")  # what pg_export_snapshot() names look like


@dataclass(frozen=True)
class SlotReset:
    """What the reset of one shard did: rows of its outbox table `published` from it, rows
    `in_kafka` already (left alone), and the checkpoint it moved to (the new slot's start)."""

    shard: str
    slot: str
    published: int
    in_kafka: int
    position: Position

    def render(self) -> str:
        return (
            f"{self.shard}: slot {self.slot} recreated; {self.published} event(s) published from the outbox "
            f"table, {self.in_kafka} found in Kafka already; checkpoint: {self.position}"
        )


def reset_slots(settings: RelaySettings) -> list[SlotReset]:
    """Reset every shard of the source whose slot is lost or missing (see the module); none if
    all slots can go on. Raises `RelayError` if a running relay holds such a shard."""
    engine = urls.engine(settings.database_url.get_secret_value())
    try:
        stuck = [
            shard for shard in _shards(settings) if _unusable(engine, slot_name(settings.source_id, shard))
        ]
        with _holding(engine, settings, stuck, "reset-slot"):
            return [_reset(settings, engine, shard) for shard in stuck]
    finally:
        engine.dispose()


def drop_slots(settings: RelaySettings) -> list[str]:
    """Drop every shard's slot and publication of a source being retired (its relays stopped):
    the WAL they kept is released, and what they had not streamed is never captured. Returns the
    slots dropped. Raises `RelayError` if a running relay holds a shard."""
    engine = urls.engine(settings.database_url.get_secret_value())
    try:
        shards = _shards(settings)
        present = [shard for shard in shards if slot_state(engine, slot_name(settings.source_id, shard))]
        with _holding(engine, settings, shards, "drop-slot"):
            for shard in shards:
                drop_slot(engine, settings.source_id, shard)
        return [slot_name(settings.source_id, shard) for shard in present]
    finally:
        engine.dispose()


def _shards(settings: RelaySettings) -> list[Shard]:
    return [Shard(index, settings.shards) for index in range(settings.shards)]


@contextmanager
def _holding(engine: Engine, settings: RelaySettings, shards: list[Shard], command: str) -> Iterator[None]:
    """Hold the leases of `shards` for the block, so no relay publishes them meanwhile; refuse
    (`RelayError`) if a running relay holds one."""
    if not shards:
        yield
        return
    leases = AdvisoryLeases(
        engine,
        settings.source_id,
        settings.shards,
        interval=settings.lease_interval,
        timeout=settings.lease_timeout,
    )
    try:
        busy = sorted(set(shards) - leases.refresh())
        if busy:
            raise RelayError(
                f"a running relay holds {', '.join(map(str, busy))} of source {settings.source_id}: "
                f"stop the source's relays (scale them to 0), then run {command} again"
            )
        yield
    finally:
        leases.close()


def _unusable(engine: Engine, name: str) -> bool:
    state = slot_state(engine, name)
    return state is None or state.lost


def _reset(settings: RelaySettings, engine: Engine, shard: Shard) -> SlotReset:
    name = slot_name(settings.source_id, shard)
    checkpoints = Checkpoints(settings.kafka, settings.checkpoint_topic, settings.source_id, shard)
    checkpoints.ensure_topic()
    publisher = TransactionalPublisher(
        settings.kafka,
        transactional_id(settings.source_id, shard),
        timeout=settings.kafka_timeout,
        signer=settings.signer,
    )
    try:
        publisher.start()  # fences every earlier relay of the shard, then the checkpoint is final
        old = checkpoints.read()
        rows.expect_mode(old, "wal")
        ensure_publication(engine, name, shard)  # before the slot: pgoutput reads it as of each change
        drop_slot(engine, settings.source_id, shard, publication=False)
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            new = Position(lsn=_slot_in_snapshot(engine, conn, name), index=0)
            target = _Republisher(publisher, checkpoints, old, new, settings.batch_size)
            published, known = _publish_missing(settings.kafka, conn, shard, target)
    finally:
        publisher.close()
    log.info("reset slot %s of %s at %s: %d event(s) published", name, shard, new, published)
    return SlotReset(str(shard), name, published, known, new)


def _slot_in_snapshot(engine: Engine, conn: Connection, name: str) -> int:
    """Create slot `name` and make `conn`'s transaction see what the slot will not stream: the
    snapshot the slot exported, as of its consistent point. Returns that point (an LSN)."""
    options = "SNAPSHOT 'export'" + (", FAILOVER" if failover_slots(engine) else "")  # as `create_slot`
    exporter = replication_connection(engine)
    try:
        cursor = exporter.cursor()
        cursor.execute(f'CREATE_REPLICATION_SLOT "{name}" LOGICAL pgoutput ({options})')
        _, start, snapshot, _ = cursor.fetchone()
        if not _SNAPSHOT.match(snapshot):
            raise RelayError(f"unexpected snapshot name {snapshot!r} from creating slot {name}")
        # The exported snapshot lives until the exporter's next command: imported first.
        conn.execute(text(f"set transaction snapshot '{snapshot}'"))
    finally:
        exporter.close()
    high, low = str(start).split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _publish_missing(
    kafka: KafkaSettings, conn: Connection, shard: Shard, target: _Republisher
) -> tuple[int, int]:
    """Publish the shard's rows `conn` sees whose events are not in Kafka (see `_Republisher`).
    Returns how many were published, and how many were in Kafka already."""
    in_shard = [] if shard.count == 1 else [func.coalesce(OUTBOX.shard_key, 0) % shard.count == shard.index]
    topics = conn.execute(select(OUTBOX.topic).distinct().where(*in_shard)).scalars().all()
    in_kafka = published_event_ids(kafka, topics)
    ordered = (
        select(*WIRE)
        .where(*in_shard)
        .order_by(OUTBOX.aggregatetype, OUTBOX.aggregateid, OUTBOX.aggregateversion, OUTBOX.id)
    )
    return target.publish(conn.execution_options(yield_per=target.batch_size).execute(ordered), in_kafka)


@dataclass(frozen=True)
class _Republisher:
    """Publishes rows `batch_size` per Kafka transaction, each with the `old` checkpoint but the
    last, which moves it to `new`: until that one commits, the checkpoint says the reset is not done."""

    publisher: TransactionalPublisher
    checkpoints: Checkpoints
    old: Position
    new: Position
    batch_size: int

    def publish(self, found: Iterable[Any], in_kafka: set[str]) -> tuple[int, int]:
        """Publish the rows of `found` whose event is not `in_kafka`; how many were, how many not."""
        batch: list[Envelope] = []
        published = known = 0
        for row in found:
            if row.event_id in in_kafka:
                known += 1
                continue
            batch.append(rows.envelope_of(row))
            if len(batch) == self.batch_size:
                self.publisher.publish(batch, self.checkpoints.record(self.old))
                published, batch = published + len(batch), []
        self.publisher.publish(batch, self.checkpoints.record(self.new))  # perhaps empty: it moves anyway
        return published + len(batch), known
