"""Capture from SQLite: polling by id (the contract is in `relay.capture.source`).

One writer at a time holds the database from its first write to its commit, so ids are handed
out in commit order and `id > :last` is both promises at once — as long as no id is handed out
twice, which is why the outbox table uses AUTOINCREMENT.

A database behind its checkpoint shows as the id counter behind the checkpoint, or the
checkpoint's own row holding another event; `check` looks at both.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import Engine, column, func, select, table

from relay.capture import rows
from relay.capture.rows import OUTBOX, START_OVER, WIRE
from relay.capture.source import Backlog, Batch, Position
from relay.errors import UnsafeOutboxError

# Where SQLite keeps the highest id an AUTOINCREMENT table ever handed out.
_SEQUENCE = table("sqlite_sequence", column("name"), column("seq"))
_MASTER = table("sqlite_master", column("type"), column("name"), column("sql"))


class SqliteCapture(rows.Polling):
    """Polls an SQLite outbox by id: with one writer at a time, id order is commit order."""

    def __init__(self, engine: Engine) -> None:
        rows.expect_dialect(engine, "sqlite", "polling by id on a multi-writer database skips rows")
        self._engine = engine
        self._table_checked = False

    def fetch(self, after: Position, limit: int) -> Batch:
        self.check(after)
        query = select(*WIRE).where(OUTBOX.id > after.after_id).order_by(OUTBOX.id).limit(limit)
        found = rows.read(self._engine, query)
        if not found:
            return Batch([], after)
        last = found[-1]
        return Batch(rows.captured(found), replace(after, after_id=last.id, after_event_id=last.event_id))

    def delete_published(self, position: Position, limit: int, created_before: datetime | None) -> int:
        self.check(position)
        return rows.delete_oldest(self._engine, [OUTBOX.id <= position.after_id], limit, created_before)

    def backlog(self, position: Position) -> Backlog:
        return rows.backlog(self._engine, [OUTBOX.id > position.after_id])

    def check(self, position: Position) -> None:
        """Ids never come back while the id counter is at or past the checkpoint and the checkpoint's
        row, until cleanup deletes it, holds the event published with it. One query per call."""
        self._check_table()
        if position.after_id == 0:
            return
        counter, at_checkpoint, highest = tuple(
            rows.read(
                self._engine,
                select(
                    select(_SEQUENCE.c.seq).where(_SEQUENCE.c.name == "outbox").scalar_subquery(),
                    select(OUTBOX.event_id).where(OUTBOX.id == position.after_id).scalar_subquery(),
                    select(func.max(OUTBOX.id)).where(OUTBOX.id <= position.after_id).scalar_subquery(),
                ),
            )[0]
        )
        if (counter or 0) < position.after_id:
            found = "new rows get ids" if highest is None else f"outbox row {highest} is"
            why = f"the outbox's id counter is at {counter or 0}, behind it"
        elif position.after_event_id is not None and at_checkpoint not in (None, position.after_event_id):
            found = f"outbox row {position.after_id} is"
            why = f"it holds event {at_checkpoint}, the checkpoint's is {position.after_event_id}"
        else:
            return
        raise UnsafeOutboxError(
            f"{found} at or below the relay's checkpoint ({position}), never published: {why} (the table "
            f"was recreated, or the database restored from a backup). {START_OVER}"
        )

    def _check_table(self) -> None:
        if self._table_checked:
            return
        definition = rows.read(
            self._engine, select(_MASTER.c.sql).where(_MASTER.c.type == "table", _MASTER.c.name == "outbox")
        )
        if not definition:
            return  # no table (yet): reading it fails with that, and is retried
        if "AUTOINCREMENT" not in str(definition[0][0]).upper():
            raise UnsafeOutboxError(
                "the outbox table was created without AUTOINCREMENT (by an older outboxkit): once cleanup "
                "has emptied it, SQLite hands its ids out again and the relay would skip those events. "
                "Run `outboxkit migrate --url URL`; a table made by outbox.metadata.create_all() is drained "
                "by the relay run before, dropped and created again instead, and published under a new "
                "OUTBOXKIT_RELAY_SOURCE_ID (its ids start at 1 again, below the old checkpoint)"
            )
        self._table_checked = True
