"""Add `outbox.shard_key`, by which several relays split one outbox.

Rows already waiting keep NULL, which relays read as shard 0: they are published, by one relay.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("shard_key", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as outbox:
        outbox.drop_column("shard_key")
