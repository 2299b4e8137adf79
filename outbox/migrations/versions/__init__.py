"""Revisions of the outbox tables, oldest first. Alembic skips this file."""
