"""The relay's dead letters: where an outbox row goes when Kafka will never take it.

The row is moved — inserted into `outbox_dead_letters` with the reason and deleted from the outbox —
in one database transaction, so it is in exactly one of the two at any moment, and capture,
which reads the outbox, simply no longer sees it. Nothing is dropped: the row keeps its id,
event id and payload for an operator to fix and re-publish. The other events of its key go on
(an aggregate version gap tells consumers one is missing); `outboxkit relay status` lists it.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, delete, func, insert, literal, select
from sqlalchemy.exc import SQLAlchemyError

from outbox.table import dead_letters_table, outbox_table
from relay import names
from relay.errors import CaptureError

log = logging.getLogger(names.LOGGER)


class DeadLetters:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def move(self, row_id: int, reason: str) -> None:
        """Move outbox row `row_id` to the dead letters with `reason`."""
        columns = [c.name for c in dead_letters_table.c if c.name not in {"reason", "dead_lettered_at"}]
        rows = select(*(outbox_table.c[name] for name in columns), literal(reason)).where(
            outbox_table.c.id == row_id
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(dead_letters_table).from_select([*columns, "reason"], rows))
                conn.execute(delete(outbox_table).where(outbox_table.c.id == row_id))
        except SQLAlchemyError as exc:
            raise CaptureError(f"cannot move outbox row {row_id} to the dead letters: {exc}") from exc
        log.error("outbox row %d is a dead letter: %s", row_id, reason)

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(dead_letters_table)).scalar_one())
