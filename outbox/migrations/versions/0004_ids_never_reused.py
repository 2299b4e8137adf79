"""SQLite: rebuild `outbox` with AUTOINCREMENT, so ids of deleted rows are never handed out again.

Without it SQLite gives the next row the highest id present plus one: once cleanup has emptied the
outbox, ids start at 1 again, at or below the relay's checkpoint, and those events are never
published. The rows are copied over as they are (same ids). The counter then starts above every id
the old table can have handed out — the migration cannot read the relay's checkpoint (it is in
Kafka), but each outbox row ever written bumped one `outbox_versions` counter by one, so their sum
bounds every id the old table gave out, the checkpoint's included. PostgreSQL: nothing to do (its
sequence never goes back by itself).

Rows the old table already gave reused ids are still at risk when the migration runs: their ids may
be at or below the checkpoint, which would skip them. They are recognisable: cleanup deletes the
oldest rows first, so without reuse the highest id present is the number of rows ever written (the
sum of the counters); after reuse it is lower. Then every row present moves above that sum, in the
same order, and the relay publishes them. A row among them that the old relay did publish (kept for
the retention time) is published a second time: the sink skips it by event id and version. A lost
event is worse than a duplicate every consumer of outboxkit's topics already absorbs.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(autoincrement=True)
    bind = op.get_bind()
    rows, highest, written = bind.execute(
        sa.text(
            "select (select count(*) from outbox), "
            "max((select coalesce(max(id), 0) from outbox), "
            "(select coalesce(max(id), 0) from outbox_quarantine)), "
            "(select coalesce(sum(version), 0) from outbox_versions)"
        )
    ).one()
    if rows and highest < written:
        _renumber(rows, highest, written)
    floor = bind.execute(
        sa.text("select max(:written, :highest, (select coalesce(max(id), 0) from outbox))"),
        {"written": written, "highest": highest},
    ).scalar_one()
    bind.execute(sa.text("delete from sqlite_sequence where name = 'outbox'"))
    bind.execute(
        sa.text("insert into sqlite_sequence (name, seq) values ('outbox', :floor)"), {"floor": floor}
    )


def _renumber(rows: int, highest: int, written: int) -> None:
    """Move every row above `written` (no id ever handed out is higher), keeping their order."""
    op.get_bind().execute(sa.text("update outbox set id = id + :written"), {"written": written})
    log.warning(
        "outbox: the old table handed ids out again (the highest is %d, but %d rows were written): its "
        "%d row(s) now have ids above %d, so the relay publishes them; one it had published already "
        "is published again, and the sink skips it",
        highest,
        written,
        rows,
        written,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    # Batch mode copies the table into a new one made with the given options, then renames it.
    with op.batch_alter_table(
        "outbox", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
