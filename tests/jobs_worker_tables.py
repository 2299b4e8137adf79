"""The tables of tests/jobs_worker_app.py, importable without starting its broker."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table

APP = MetaData()
effects = Table(
    "effects",
    APP,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("key", String(64), nullable=False),
)
switches = Table("switches", APP, Column("name", String(64), primary_key=True), Column("fixed", Boolean))
