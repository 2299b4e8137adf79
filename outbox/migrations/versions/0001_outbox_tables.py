"""Create the outbox and its per-aggregate version counters.

Written out column by column rather than imported from `outbox.table`: a migration is a frozen
record of what it created, and must not change when the table definition later does.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = ("outboxkit",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("aggregatetype", sa.String(255), nullable=False),
        sa.Column("aggregateid", sa.String(255), nullable=False),
        sa.Column("aggregateversion", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False, server_default="{}"),
        sa.Column("schema_version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("xid", sa.BigInteger, nullable=True),
    )
    op.create_index("outbox_xid", "outbox", ["xid"])
    op.create_table(
        "outbox_versions",
        sa.Column("aggregatetype", sa.String(255), primary_key=True),
        sa.Column("aggregateid", sa.String(255), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("outbox_versions")
    op.drop_table("outbox")
