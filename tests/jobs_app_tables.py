"""The worker database of tests/jobs_app.py, and its actors' names: importable by the test process
(the app side, which enqueues) without starting the worker app's broker.

`effects` has no unique constraint on the message id on purpose: a job whose effect commits twice
shows as two rows, which is what the end-to-end tests look for. `deliveries` gets one row per
message a worker was handed (its inbox skipping it or not), so a test can count what the broker
delivered against what ran.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table

RECORD_EFFECT: Final = "record_effect"
FAILS_UNTIL_FIXED: Final = "fails_until_fixed"
MAX_RETRIES: Final = 2  # of fails_until_fixed: 3 attempts, then the dead-letter queue

TABLES = MetaData()
effects = Table(
    "effects",
    TABLES,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("n", Integer, nullable=False),
)
deliveries = Table(
    "deliveries",
    TABLES,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("actor_name", String(64), nullable=False),
)
# A parked job waits, its effect written and not committed, until the test releases it.
parked = Table(
    "parked", TABLES, Column("id", Integer, primary_key=True, autoincrement=True), Column("n", Integer)
)
released = Table("released", TABLES, Column("n", Integer, primary_key=True))
fixed = Table("fixed", TABLES, Column("n", Integer, primary_key=True), Column("ok", Boolean))
