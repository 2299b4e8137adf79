"""outboxkit's own Alembic migrations for the outbox tables (see `outbox.schema`)."""
