"""Add `outbox_job_inbox`: the message ids of the Dramatiq jobs whose effect committed.

A worker's `jobs.inbox` writes one row in the actor's own transaction and skips a message whose
row is already there; rows are pruned by `done_at`, hence its index.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_job_inbox",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("actor_name", sa.String(255), nullable=False),
        sa.Column("queue_name", sa.String(255), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("outbox_job_inbox_done_at", "outbox_job_inbox", ["done_at"])


def downgrade() -> None:
    op.drop_index("outbox_job_inbox_done_at", table_name="outbox_job_inbox")
    op.drop_table("outbox_job_inbox")
