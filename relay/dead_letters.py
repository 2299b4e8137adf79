"""The relay's dead letters: where an outbox row goes when Kafka will never take it.

The row is moved — inserted into `outbox_dead_letters` with the reason and deleted from the outbox —
in one database transaction, so it is in exactly one of the two at any moment, and capture,
which reads the outbox, simply no longer sees it. Nothing is dropped: the row keeps its id,
event id and payload for an operator to fix and re-publish. An event written as a logical
message has no row to move: its dead letter holds everything it carried, under its negative id.
The other events of its key go on (an aggregate version gap tells consumers one is missing);
`outboxkit relay status` lists it.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, Executable, delete, exists, func, insert, literal, select
from sqlalchemy.exc import SQLAlchemyError

from outbox.table import dead_letters_table, outbox_table
from relay import names
from relay.capture.rows import columns_of
from relay.capture.source import CapturedRow
from relay.errors import CaptureError

log = logging.getLogger(names.LOGGER)


class DeadLetters:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def move(self, row: CapturedRow, reason: str) -> None:
        """Move outbox row `row` to the dead letters with `reason`. An event without a row (a
        logical message) is written there whole, from what was captured, once: the slot re-sends
        it to a restarted relay, which finds it refused again."""
        statements = _moved(row, reason) if row.has_row else [_written_whole(row, reason)]
        try:
            with self._engine.begin() as conn:
                for statement in statements:
                    conn.execute(statement)
        except SQLAlchemyError as exc:
            raise CaptureError(f"cannot move {_described(row)} to the dead letters: {exc}") from exc
        log.error("%s is a dead letter: %s", _described(row), reason)

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(dead_letters_table)).scalar_one())


_COLUMNS = [c.name for c in dead_letters_table.c if c.name not in {"reason", "dead_lettered_at"}]


def _moved(row: CapturedRow, reason: str) -> list[Executable]:
    """Copy the row from the outbox and delete it there (a second move finds no row: a no-op)."""
    copied = select(*(outbox_table.c[name] for name in _COLUMNS), literal(reason)).where(
        outbox_table.c.id == row.id
    )
    return [
        insert(dead_letters_table).from_select([*_COLUMNS, "reason"], copied),
        delete(outbox_table).where(outbox_table.c.id == row.id),
    ]


def _written_whole(row: CapturedRow, reason: str) -> Executable:
    """Insert the event's columns as captured, unless its dead letter is there already."""
    captured = columns_of(row)
    values = select(*(literal(captured[name], dead_letters_table.c[name].type) for name in _COLUMNS))
    values = values.add_columns(literal(reason)).where(~exists().where(dead_letters_table.c.id == row.id))
    return insert(dead_letters_table).from_select([*_COLUMNS, "reason"], values)


def _described(row: CapturedRow) -> str:
    if row.has_row:
        return f"outbox row {row.id}"
    return f"event {row.envelope.event_id} (a logical message, dead letter id {row.id})"
