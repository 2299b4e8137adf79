"""SQLite: rebuild `outbox` with AUTOINCREMENT, so ids of deleted rows are never handed out again.

Without it SQLite gives the next row the highest id present plus one: once cleanup has emptied the
outbox, ids start at 1 again, at or below the relay's checkpoint, and those events are never
published. The rows are copied over as they are (same ids). The counter then starts above every id
the old table can have handed out — the migration cannot read the relay's checkpoint (it is in
Kafka), but each outbox row ever written bumped one `outbox_versions` counter by one, so their sum
bounds every id the old table gave out, the checkpoint's included. PostgreSQL: nothing to do (its
sequence never goes back by itself).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _rebuild(autoincrement=True)
    bind = op.get_bind()
    floor = bind.execute(
        sa.text(
            "select max((select coalesce(max(id), 0) from outbox), "
            "(select coalesce(sum(version), 0) from outbox_versions), "
            "(select coalesce(max(id), 0) from outbox_quarantine))"
        )
    ).scalar_one()
    bind.execute(sa.text("delete from sqlite_sequence where name = 'outbox'"))
    bind.execute(
        sa.text("insert into sqlite_sequence (name, seq) values ('outbox', :floor)"), {"floor": floor}
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
