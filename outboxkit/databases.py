"""Databases the kit's own runs make on a PostgreSQL server (the demo's and the chaos run's), the
engines they use, and what the app committed there."""

from __future__ import annotations

from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from wire.jobs import JOB_AGGREGATE_TYPE


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


def app_engine(url: str, writers: int) -> Engine:
    """An engine for `writers` threads; on SQLite, writers wait for each other instead of failing at once."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=writers + 2, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: object, _: object) -> None:  # readers never block the writer
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]

    return engine


def committed_events(engine: Engine) -> int | None:
    """Events the app has committed, jobs apart (None while its database is away).

    Per-aggregate versions are dense from 1 in commit order, so their sum counts the events. A job
    (`outbox.jobs.enqueue`) is an aggregate of its own, at version 1: `committed_jobs` lists those.
    """
    query = "SELECT coalesce(sum(version), 0) FROM outbox_versions WHERE aggregatetype <> :job"
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(query), {"job": JOB_AGGREGATE_TYPE}).scalar_one())
    except SQLAlchemyError:
        return None


def committed_jobs(engine: Engine) -> list[str]:
    """The message ids of the jobs the app has committed (a job's aggregate id is its message id)."""
    query = "SELECT aggregateid FROM outbox_versions WHERE aggregatetype = :job"
    with engine.connect() as conn:
        return list(conn.execute(text(query), {"job": JOB_AGGREGATE_TYPE}).scalars())
