"""Rename `outbox_quarantine` to `outbox_dead_letters`, and `quarantined_at` to `dead_lettered_at`.

The relay and the sink now say "dead letter" for a record refused for good. The rows stay as they
are: a rename on both dialects, no copy. On PostgreSQL the primary key's constraint (and its index)
is renamed too, so an upgraded database matches a new one.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _rename(("outbox_quarantine", "quarantined_at"), ("outbox_dead_letters", "dead_lettered_at"))


def downgrade() -> None:
    _rename(("outbox_dead_letters", "dead_lettered_at"), ("outbox_quarantine", "quarantined_at"))


def _rename(old: tuple[str, str], new: tuple[str, str]) -> None:
    (old_table, old_column), (new_table, new_column) = old, new
    op.rename_table(old_table, new_table)
    # ALTER TABLE ... RENAME COLUMN: PostgreSQL, and SQLite since 3.25 (2018); no table rebuild.
    op.execute(f"ALTER TABLE {new_table} RENAME COLUMN {old_column} TO {new_column}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {new_table} RENAME CONSTRAINT {old_table}_pkey TO {new_table}_pkey")
