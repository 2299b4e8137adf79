"""Databases the kit's own runs make on a PostgreSQL server: the demo's and the chaos run's."""

from __future__ import annotations

from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool


def server(url: str) -> URL:
    """The server of `url`, with plain `postgresql://` meaning psycopg 3 (the driver outboxkit uses)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed


def create_database(server_url: URL, name: str, *, replace: bool = False) -> str:
    """Create the database `name` (dropping an old one first with `replace`); return its URL."""
    _run(server_url, *((f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',) if replace else ()))
    _run(server_url, f'CREATE DATABASE "{name}"')
    return server_url.set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: URL, name: str) -> None:
    """Drop `name`; FORCE, since a process killed mid-run may still hold a connection."""
    _run(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(server_url: URL, *statements: str) -> None:
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool, pool_pre_ping=True)
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        admin.dispose()


def committed_events(engine: Engine) -> int | None:
    """Events the app has committed (None while its database is away).

    Per-aggregate versions are dense from 1 in commit order, so their sum counts the events.
    """
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(text("SELECT coalesce(sum(version), 0) FROM outbox_versions")).scalar_one()
            )
    except SQLAlchemyError:
        return None
