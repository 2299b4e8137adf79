"""Capture from PostgreSQL's write-ahead log (the contract is in `relay.capture.source`).

A publication on the outbox table (inserts only; with shards, one per shard with the row filter
`coalesce(shard_key, 0) % N = i`) and a logical replication slot with the `pgoutput` plugin, both
named after the source id and shard (`slot_name`), created by `outboxkit migrate --wal-source`
or by the relay at start if missing (`relay.capture.slots`) — publication first, as the plugin
reads it as of each change. The relay's role needs REPLICATION (or superuser) and, to create the
publication, ownership of the outbox table.

Both promises come from the log itself. pgoutput sends each committed transaction whole, at its
commit, in commit order, its rows in the order they were written; nothing of a transaction that
has not committed (or rolled back) is sent. Rows inserted with raw SQL, without `xid`, are
captured like any other. So the position is the commit LSN of the transaction the last row came
from plus how many of its rows were handed out (`Position.lsn`, `Position.index`): never an LSN
alone, which several rows of one multi-row INSERT or COPY share, and a batch may end inside a
transaction.

The slot's confirmed position moves only after the Kafka transaction that checkpointed a
position committed (`published`), and only to that position's commit LSN: every transaction
committed before it is in Kafka, and the slot re-sends the one at it. On restart the slot
re-sends from its confirmed position, which may be behind the checkpoint (a crash between the
Kafka commit and the confirmation): rows up to the checkpoint are skipped, nothing is published
twice. A successor taking over a shard ends the connection its predecessor may still stream the
slot on (a slot serves one at a time): that relay has lost the shard's lease and been fenced.

Limits:
* rows committed before the slot existed are never captured: create the slots with the tables
  (`outboxkit migrate --wal-source`), or start a source in `wal` mode on an empty outbox, or
  under a new source id once polling drained it;
* a transaction is kept in memory whole until its commit arrives (pgoutput protocol 1 does not
  stream open transactions);
* an idle outbox pins WAL from the last published commit on, unless the relay heartbeats: an
  empty fetch that caught up moves the position to where the server has decoded, which the
  relay checkpoints in an empty Kafka transaction and then confirms (`Relay`'s heartbeat);
* psycopg2 moves a slot's confirmed position by itself on a server keepalive that arrives before
  any row of the session; `check` refuses a slot confirmed past the checkpoint, so rows such a
  move would skip stop the relay rather than go missing;

**Events without a row.** An app writing with `OutboxSettings.write_as="message"` emits each
event as a transactional logical message (`outbox.store`): prefix `outbox.table.MESSAGE_PREFIX`
and the outbox table's oid, content the row's columns as JSON. pgoutput sends them (option
`messages`) among their transaction's rows, in the order they were written, so rows and
messages mix in one transaction and one position counts both. Every slot of the database gets
every message — publications and their row filters do not apply to them — so the relay keeps
only the transactional ones with its outbox's prefix, and of those the ones of its shard
(`coalesce(shard_key, 0) % N = i`, the publication's filter). They get a negative id
(`message_id`): cleanup has nothing to delete for them, and a dead letter keeps them whole.

Cleanup deletes the rows this relay has seen published, by id: those of transactions it handed
out and whose checkpoint committed, and those the slot re-sent at start below the checkpoint
(only their ids and ages are kept for it, and nothing with cleanup off).
What was published before the slot's confirmed position by an earlier relay, and not yet deleted
when it stopped, is left behind (already in Kafka; delete it by hand, or keep it for retention).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg2
import psycopg2.extras
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from outbox.table import MESSAGE_PREFIX
from relay.capture import pgoutput, rows
from relay.capture.rows import OUTBOX
from relay.capture.slots import (
    LSN,
    RESET_SLOT,
    drop_slot,
    end_streaming,
    ensure_slot,
    slot_name,
    slot_problem,
    slot_state,
)
from relay.capture.source import Backlog, Batch, CapturedRow, Position
from relay.errors import CaptureError, SlotInvalidatedError, UnsafeOutboxError
from relay.shards import ONLY, Shard
from relay.wakeup import wait_readable
from runtime import urls

# drop_slot and slot_name live in relay.capture.slots, and are imported from here too.
__all__ = ["WalCapture", "drop_slot", "replication_connection", "slot_name"]

log = logging.getLogger(__name__)

# Seconds one fetch reads the log at most to catch up with its end: the relay checks its leases
# between fetches, so a fetch must return well within the lease timeout (15 s by default).
CATCH_UP_SECONDS = 5.0
_PING_SECONDS = 0.02  # between requests for the server's position while catching up


@dataclass(frozen=True, slots=True)
class _Entry:
    """A captured row and its place: the commit LSN of its transaction, its index within it."""

    lsn: int
    index: int
    row: CapturedRow

    def published_by(self, position: Position) -> bool:
        return position.lsn is not None and (self.lsn, self.index) < (position.lsn, position.index)


class _WalRow(NamedTuple):
    """An outbox row as the log carries it, in the shape `rows.envelope_of` reads: a named tuple,
    built once per captured event in half a frozen dataclass's time (12 fields)."""

    id: int
    event_id: str
    topic: str
    key: str | None
    payload: str
    type: str
    aggregatetype: str
    aggregateid: str
    aggregateversion: int
    schema_version: int
    headers: str
    created_at: datetime

    @classmethod
    def of(cls, values: Sequence[Any]) -> _WalRow:
        """The row from its fields' values, in their order (`_layout` picks them so), in PostgreSQL's
        text form (a row) or JSON's (a message): positional, as this runs once per captured event."""
        (row_id, event, topic, key, payload, kind, aggregate, aggregate_id, version, schema, headers, at) = (
            values
        )
        return cls(
            int(row_id), event, topic, key, payload, kind, aggregate, aggregate_id,
            int(version), int(schema), headers, datetime.fromisoformat(str(at)),
        )  # fmt: skip


class WalCapture:
    """Streams one shard of a PostgreSQL outbox from a logical replication slot (see the module
    docstring).

    A fetch that returns no rows has caught up with the log: every transaction committed before the
    fetch began was received (or `CATCH_UP_SECONDS` passed; the next fetch goes on). So an empty
    batch means what it means for the polling sources, and `relay run --drain` stops only once
    what was committed before it is in Kafka.

    With `cleanup` False (`OUTBOXKIT_RELAY_CLEANUP=false`: rows are kept, or deleted by other
    means) nothing is remembered for `delete_published`, which then deletes nothing: otherwise the
    id of every row published would be kept for a cleanup that never comes, growing without end."""

    def __init__(self, engine: Engine, source_id: str, shard: Shard = ONLY, *, cleanup: bool = True) -> None:
        rows.expect_dialect(engine, "postgresql", "it reads the write-ahead log")
        self._engine, self._shard = engine, shard
        self.slot = slot_name(source_id, shard)
        self._created = ensure_slot(engine, self.slot, shard)
        self._prefix = MESSAGE_PREFIX + str(self._query("select cast(to_regclass('outbox') as oid)"))
        self._stream: Any = None  # the replication cursor, opened by the first fetch
        self._ready: deque[_Entry] = deque()  # rows of committed transactions, not yet published
        self._open: list[CapturedRow] | None = None  # the rows of the transaction being received
        self._open_lsn = 0
        self._layouts: dict[int, tuple[int, ...]] = {}  # per table oid: see `_layout`
        self._cleanup = cleanup
        self._published: deque[tuple[int, datetime | None]] = deque()  # for cleanup: id, created_at
        self._checked = False
        self._confirmed_at = datetime.now(UTC)  # when `published` last confirmed the slot

    def fetch(self, after: Position, limit: int) -> Batch:
        if not self._checked:
            self.check(after)
            self._checked = True
            self._created = False  # the slot is this checkpoint's from now on
        self._forget(after)
        try:
            decoded = self._receive(after, limit)
        except psycopg2.Error as exc:
            self.close()  # the slot re-sends from its confirmed position on the next fetch
            self._expect_kept()  # the server ends the stream of a slot it invalidates
            raise CaptureError(f"cannot stream the outbox from replication slot {self.slot}: {exc}") from exc
        except CaptureError:
            # A stopping server waits for the slot's walsender, which waits for this stream to
            # confirm all it was sent: left open while the relay backs off (the server refusing the
            # connections `_receive` asks for), it held a fast shutdown for as long (seen in B2).
            self.close()
            raise
        taken = [self._ready[i] for i in range(min(limit, len(self._ready)))]
        if not taken:
            moved = after if decoded <= (after.lsn or 0) else Position(lsn=decoded, index=0)
            return Batch([], moved, caught_up=decoded > 0)
        last = taken[-1]
        return Batch([entry.row for entry in taken], Position(lsn=last.lsn, index=last.index + 1))

    def published(self, position: Position) -> None:
        """Confirm the slot up to the commit LSN of `position`'s transaction: all before it are in
        Kafka; that one the slot re-sends after a restart, and the checkpoint skips what of it is."""
        if self._stream is not None and position.lsn is not None:
            try:
                self._stream.send_feedback(flush_lsn=position.lsn, force=True)
                self._confirmed_at = datetime.now(UTC)
            except psycopg2.Error as exc:
                self.close()
                raise CaptureError(f"cannot confirm replication slot {self.slot}: {exc}") from exc

    def dead_lettered(self, row_id: int) -> None:
        """Drop the row from what is handed out. Should it be the last of the log, the checkpoint
        stays before it: a restarted relay gets it again from the slot, finds it refused again, and
        its second move to the dead letters finds no row to move."""
        self._ready = deque(entry for entry in self._ready if entry.row.id != row_id)

    def delete_published(self, position: Position, limit: int, created_before: datetime | None) -> int:
        self._forget(position)
        chosen = [
            row_id
            for row_id, created_at in self._published
            if created_before is None or (created_at is not None and created_at < created_before)
        ][:limit]
        if not chosen:
            return 0
        self.check(position)
        deleted = rows.delete_oldest(self._engine, [OUTBOX.id.in_(chosen)], limit, None)
        gone = set(chosen)
        self._published = deque(kept for kept in self._published if kept[0] not in gone)
        return deleted

    def backlog(self, position: Position) -> Backlog:
        """The rows received and not yet published, and the WAL the slot holds (rows committed
        but not yet streamed show in `lag_bytes` only), and for how long: since the oldest row
        waiting was written, or else since the slot was last confirmed (by this relay; since it
        started if it has not confirmed yet)."""
        waiting = [e.row.envelope.created_at for e in self._ready if not e.published_by(position)]
        slot = slot_state(self._engine, self.slot)
        oldest = min((at for at in waiting if at is not None), default=None)
        lag = None if slot is None else slot.lag_bytes
        age = (datetime.now(UTC) - (oldest or self._confirmed_at)).total_seconds() if lag else 0.0
        return Backlog(len(waiting), oldest, lag, age)

    def check(self, position: Position) -> None:
        """Refuse a checkpoint this database or slot cannot continue: a WAL behind it (a restored
        backup, another database), a slot created anew under it or confirmed past it (rows
        committed in between would be skipped), a polling checkpoint."""
        rows.expect_mode(position, "wal")
        self._expect_kept()
        if position.lsn is None:
            return
        current = self._query(f"select {LSN.format('pg_current_wal_lsn()')}")
        confirmed = self._query(
            f"select {LSN.format('confirmed_flush_lsn')} from pg_replication_slots where slot_name = :slot"  # noqa: S608
        )
        problem = slot_problem(int(current or 0), confirmed, self._created, position.lsn, self._checked)
        if problem is not None:
            # A slot gone or moved is what reset-slot mends; a database behind Kafka is not.
            remedy = rows.START_OVER if int(current or 0) < position.lsn else RESET_SLOT
            raise UnsafeOutboxError(
                f"replication slot {self.slot} cannot continue the checkpoint ({position}): {problem}. "
                + remedy
            )

    def _expect_kept(self) -> None:
        """Raise `SlotInvalidatedError` if PostgreSQL invalidated the slot (`max_slot_wal_keep_size`)."""
        slot = slot_state(self._engine, self.slot)
        if slot is not None and slot.lost:
            raise SlotInvalidatedError(self.slot)

    def wakeup_fd(self) -> int | None:
        """The replication connection's socket (once the first fetch opened it): the server sends
        each transaction on it at its commit, and keepalives now and then (a fetch that finds only
        those returns an empty batch)."""
        return None if self._stream is None else int(self._stream.fileno())

    def close(self) -> None:
        """Close the replication connection: what it received and did not publish is re-sent."""
        if self._stream is not None:
            self._stream.connection.close()
        self._stream, self._open = None, None
        self._ready.clear()

    def _forget(self, position: Position) -> None:
        """Rows up to `position` are in Kafka: keep only their ids, for cleanup."""
        while self._ready and self._ready[0].published_by(position):
            self._keep_for_cleanup(self._ready.popleft().row)

    def _keep_for_cleanup(self, row: CapturedRow) -> None:
        """Remember the row's id and age for cleanup: only those, not the row (the whole event)."""
        if self._cleanup and row.has_row:  # a logical message left nothing in the table
            self._published.append((row.id, row.envelope.created_at))

    def _receive(self, after: Position, limit: int) -> int:
        """Read the log until `limit` rows are ready, or some are and nothing more has arrived, or
        none are and the stream has caught up with the log's end as of now (see the class).

        Returns how far the server had decoded when it caught up with nothing ready (0 otherwise):
        every transaction committed before that point was received and published, so the empty
        batch's position moves there, and a heartbeat may checkpoint it and confirm the slot
        (WAL other tables wrote is let go; a transaction committing at it or later is sent again)."""
        if self._stream is None:
            self._stream = self._start(after)
        end, deadline = None, 0.0
        while len(self._ready) < limit:
            message = self._stream.read_message()
            if message is not None:
                self._handle(pgoutput.parse(message.payload), after)
                continue
            if self._ready:
                return 0
            if end is None:
                end, deadline = self._flushed_end(), time.monotonic() + CATCH_UP_SECONDS
            decoded = self._caught_up(end, deadline)
            if decoded is not None:
                return decoded
            self._stream.send_feedback(reply=True)  # asks for a keepalive with the server's position
            wait_readable([self._stream.fileno()], _PING_SECONDS)
        return 0

    def _caught_up(self, end: int, deadline: float) -> int | None:
        """How far the server has decoded, once that is at `end` or past it (0 once `deadline`
        passed first; None until then). `wal_end` comes from a keepalive, or the last message:
        every transaction that committed before it was sent, and so read."""
        if self._open is None and self._stream.wal_end >= end:
            return int(self._stream.wal_end)
        return 0 if time.monotonic() > deadline else None

    def _flushed_end(self) -> int:
        """Where the log ends on disk now: every committed transaction lies before it (a commit
        returns once flushed; asynchronous commits flush within `wal_writer_delay`)."""
        return int(self._query(f"select {LSN.format('pg_current_wal_flush_lsn()')}"))

    def _handle(self, message: pgoutput.Message, after: Position) -> None:
        if isinstance(message, pgoutput.Insert):  # first: all but a few of the messages
            if self._open is not None:
                values = message.values
                self._open.append(_captured([values[i] for i in self._layouts[message.oid]]))
        elif isinstance(message, pgoutput.Begin):
            self._open, self._open_lsn = [], message.commit_lsn
        elif isinstance(message, pgoutput.Relation):
            self._layouts[message.oid] = _layout(message)
        elif isinstance(message, pgoutput.LogicalMessage) and self._open is not None:
            self._open.extend(self._event_of(message))
        elif isinstance(message, pgoutput.Commit) and self._open is not None:
            self._commit(self._open, after)
            self._open = None

    def _commit(self, events: list[CapturedRow], after: Position) -> None:
        """A transaction's events, rows and messages, in the order written: their index is their
        place. Those `after` counts (the slot re-sent them: in Kafka already) are kept for cleanup
        only; decided once per transaction, not per row (they are the first `seen` of it)."""
        lsn = self._open_lsn
        if after.lsn is None or lsn > after.lsn:
            seen = 0
        else:
            seen = len(events) if lsn < after.lsn else min(after.index, len(events))
        for row in events[:seen]:
            self._keep_for_cleanup(row)
        self._ready.extend(_Entry(lsn, index, row) for index, row in enumerate(events[seen:], start=seen))

    def _event_of(self, message: pgoutput.LogicalMessage) -> list[CapturedRow]:
        """The event in `message` if it is one of this outbox's, in this shard (see the module
        docstring); none for any other message of the database."""
        if not message.transactional or message.prefix != self._prefix:
            return []
        columns = json.loads(message.content)
        if (columns["shard_key"] or 0) % self._shard.count != self._shard.index:
            return []
        columns["id"] = message_id(columns["event_id"])
        return [_captured([columns.get(name) for name in _WalRow._fields])]

    def _start(self, after: Position) -> Any:
        """A replication connection streaming the slot from its confirmed position.

        A slot streams to one connection at a time. This relay holds the shard's lease and has
        fenced its predecessor's producer, so a connection still streaming the slot is that
        predecessor's (paused, or dead and not yet noticed by the server): it is ended, or it would
        hold the shard's log until `wal_sender_timeout`. Its relay can commit nothing more."""
        try:
            with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                if end_streaming(conn, self.slot):
                    log.warning(
                        "ended the connection still streaming slot %s: its relay lost the shard", self.slot
                    )
        except SQLAlchemyError as exc:
            raise CaptureError(f"cannot take over replication slot {self.slot}: {exc}") from exc
        cursor = replication_connection(self._engine).cursor()
        cursor.start_replication(
            slot_name=self.slot,
            decode=False,
            options={"proto_version": "1", "publication_names": self.slot, "messages": "true"},
        )
        # psycopg2 confirms a keepalive's position by itself while nothing was confirmed; this
        # pins what was, so such a move cannot pass the checkpoint (see the module docstring).
        cursor.send_feedback(flush_lsn=after.lsn or 0)
        return cursor

    def _query(self, sql: str) -> Any:
        try:
            with self._engine.connect() as conn:
                return conn.execute(text(sql), {"slot": self.slot}).scalar()
        except SQLAlchemyError as exc:
            raise CaptureError(f"cannot read replication slot {self.slot}: {exc}") from exc


def replication_connection(engine: Engine) -> Any:
    """A psycopg2 connection in logical replication mode to the engine's database."""
    url = engine.url
    return psycopg2.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=urls.connect_timeout(url),
        # Values come in the server's text form: pin the forms `_captured` reads.
        options="-c DateStyle=ISO -c TimeZone=UTC",
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
    )


def message_id(event_id: str) -> int:
    """The id of an event written as a logical message, which has no row: negative (see
    `CapturedRow.has_row`), and derived from the event id, so a message the slot re-sends gets the
    same one (and a dead letter written for it once is found the second time)."""
    digest = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big")
    return -1 - (digest >> 1)


def _layout(relation: pgoutput.Relation) -> tuple[int, ...]:
    """Where each of `_WalRow._fields` is among the values of the table's `Insert`s."""
    place = {name: index for index, name in enumerate(relation.columns)}
    missing = [name for name in _WalRow._fields if name not in place]
    if missing:
        raise CaptureError(
            f"table {relation.namespace}.{relation.name} streamed by the outbox's publication has no "
            f"column(s) {', '.join(missing)}: upgrade its schema with `outboxkit migrate`"
        )
    return tuple(place[name] for name in _WalRow._fields)


def _captured(values: Sequence[Any]) -> CapturedRow:
    return rows.captured_row(_WalRow.of(values))
