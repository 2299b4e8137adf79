"""Alembic environment of the outbox tables.

Run through `outbox.schema.upgrade()` / `outboxkit migrate`, which hand over a connection; or by
the `alembic` command with `sqlalchemy.url` set. Progress is kept in `outboxkit_alembic_version`,
never in the application's own `alembic_version`, so both histories live side by side.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from outbox.schema import VERSION_TABLE
from outbox.table import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    config = context.config
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("outboxkit migrations: set sqlalchemy.url, or run `outboxkit migrate --url URL`")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
