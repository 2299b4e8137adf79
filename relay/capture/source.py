"""The capture source contract: where the relay reads committed outbox rows from, and in what order.

A `CaptureSource` hands out committed outbox rows batch by batch, each batch with the
`Position` after it. Two promises make a single checkpoint (the last position) sufficient:

* **gap-free**: every committed row is handed out once a position past it is reached — no row
  that commits later can turn up behind a position already handed out;
* **per-aggregate commit order**: the events of one aggregate come out in the order their
  transactions committed (which is the order of their `aggregateversion`).

How each database keeps them differs, which is why each dialect has its own source:
`relay.capture.sqlite` polls by id, `relay.capture.postgres` drains snapshot deltas; each
module's docstring shows how it keeps both promises.

**A database behind its checkpoint.** Both promises assume the checkpoint describes this database.
One restored from a backup, or an outbox table recreated, hands out ids (SQLite) or transaction
ids (PostgreSQL) again that the checkpoint counts as published: their rows would be skipped, then
deleted by cleanup. `check` finds that and raises `UnsafeOutboxError`; capture and cleanup call
it, so such rows stop the relay and stay. (What each source looks at is in its module.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from wire import Envelope

# Where the relay finds committed rows on PostgreSQL: snapshot deltas, or the write-ahead log.
CaptureMode = Literal["poll", "wal"]


@dataclass(frozen=True, slots=True)
class Position:
    """How far capture has come. `after_id`: the last id handed out (of the current delta, on
    PostgreSQL); `base` / `target`: the two snapshots bounding that delta (PostgreSQL only);
    `after_event_id`: the event of row `after_id` (SQLite only), by which capture recognises that
    id handed out again (None in checkpoints written before it was kept).

    WAL capture (`relay.capture.wal`) uses `lsn` and `index` instead: the commit LSN of the
    transaction the last handed-out row belongs to, and how many of that transaction's rows were
    handed out. Never an LSN alone: several rows share one (multi-row inserts, COPY), and a batch
    may end inside a transaction. Checkpoints of the other sources have no `lsn` (None).
    """

    after_id: int = 0
    base: str | None = None
    target: str | None = None
    after_event_id: str | None = None
    lsn: int | None = None
    index: int = 0

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {
            "after_id": self.after_id,
            "base": self.base,
            "target": self.target,
            "after_event_id": self.after_event_id,
        }
        if self.lsn is not None:  # only WAL positions: the others' checkpoints stay as they were
            found.update(lsn=self.lsn, index=self.index)
        return found

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Position:
        base, target, event = data.get("base"), data.get("target"), data.get("after_event_id")
        return cls(
            after_id=int(str(data.get("after_id", 0))),
            base=None if base is None else str(base),
            target=None if target is None else str(target),
            after_event_id=None if event is None else str(event),
            lsn=None if data.get("lsn") is None else int(str(data["lsn"])),
            index=int(str(data.get("index", 0))),
        )

    def __str__(self) -> str:
        if self.lsn is not None:
            return f"{self.index} row(s) of the transaction committed at LSN {lsn_text(self.lsn)}"
        if self.target is None:
            return f"id {self.after_id}"
        return f"id {self.after_id} of the transactions visible in {self.target} but not in {self.base}"


@dataclass(frozen=True, slots=True)
class CapturedRow:
    """An outbox row as the relay read it for publishing: its id, and the envelope to produce.

    An event written as a logical message (`OutboxSettings.write_as="message"`, read by WAL
    capture only) has no row: its id is negative (`relay.capture.wal.message_id`), so cleanup,
    which deletes rows by id, never counts it, and its dead letter is written whole from the
    envelope instead of moved from the table.

    `refused`: why the row cannot be published as it is (headers that are not a JSON object of
    strings, written around outboxkit): the relay makes it a dead letter with that reason instead
    of publishing it, and its envelope is the rest of the row, without those headers.
    """

    id: int
    envelope: Envelope
    refused: str | None = None

    @property
    def has_row(self) -> bool:
        """Whether the event is a row of the outbox table (a logical message is not)."""
        return self.id > 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows to publish, in order, and the position to checkpoint with them.

    `caught_up` False: the source stopped short of the end of what had committed (WAL capture
    out of its time while decoding a long stretch of other tables' WAL), so an empty batch does
    not mean there is nothing to publish: `relay run --drain` must not stop on it, nor the relay
    idle."""

    rows: Sequence[CapturedRow]
    position: Position
    caught_up: bool = True


class CaptureSource(Protocol):
    """Reads committed outbox rows. Implementations need not be thread-safe."""

    def fetch(self, after: Position, limit: int) -> Batch:
        """Up to `limit` rows after `after`, and the position after them.

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

    def published(self, position: Position) -> None:
        """Called after the Kafka transaction that checkpointed `position` committed: a source
        may now let go of what it kept for rows up to it (WAL capture confirms its slot). A no-op
        for the polling sources, whose database keeps nothing for them."""
        ...

    def dead_lettered(self, row_id: int) -> None:
        """The relay moved row `row_id` to the dead letters: never hand it out again. A no-op for
        the polling sources, which re-read the table, where it is gone."""
        ...

    def close(self) -> None:
        """Release what the source holds open (WAL capture: its replication connection)."""
        ...

    def wakeup_fd(self) -> int | None:
        """A file descriptor that turns readable when rows may have committed since the last
        fetch, which the relay waits on when idle instead of for its poll interval: WAL capture's
        replication socket, on which the server streams each transaction as it commits. None
        where there is none (the polling sources; WAL capture before its first fetch or after a
        failed one): the relay then waits for the app's NOTIFY or its poll interval."""
        ...


@dataclass(frozen=True, slots=True)
class Backlog:
    """`lag_bytes`: WAL the source's replication slot still holds for it, and `lag_seconds` for
    how long it has held it (WAL capture only)."""

    rows: int
    oldest: datetime | None
    lag_bytes: int | None = None
    lag_seconds: float | None = None


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it (`16/B374D848`)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
