"""The services for the benchmarks: where PostgreSQL, Kafka and Redis are, a scratch database per run,
facts about the server.

Each run gets a database of its own, created at the start and dropped at the end (also when the
run fails), so benchmark tables never meet the test suite's and a run always starts empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from runtime.kafka import KafkaSettings


class Endpoints(BaseSettings):
    """Where the services are: OUTBOXKIT_PG_URL, OUTBOXKIT_KAFKA_BOOTSTRAP and OUTBOXKIT_REDIS_URL, the
    variables scripts/services and the tests honour."""

    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_", extra="ignore")

    pg_url: str = "postgresql://outboxkit@127.0.0.1:55432/outboxkit"
    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:56379/0"  # the Dramatiq broker of B6
    state_dir: Path = Path("/var/tmp/outboxkit")  # noqa: S108 - where scripts/services keeps its pids

    @property
    def kafka(self) -> KafkaSettings:
        """Client settings for the broker, as the relay and the tests build them."""
        return KafkaSettings(bootstrap_servers=self.kafka_bootstrap)


@contextmanager
def scratch_database(server_url: str) -> Iterator[URL]:
    """A new, empty database on the server of `server_url` (psycopg 3 driver), dropped on exit."""
    server = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"outboxkit_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name)
        finally:
            # FORCE: a client thread that died mid-run may still hold a connection.
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def server_facts(engine: Engine) -> dict[str, str]:
    """The server settings that move commit-bound figures most, to read a result file by."""
    with engine.connect() as conn:
        return {
            setting: str(conn.exec_driver_sql(f"SHOW {setting}").scalar_one())
            for setting in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }


def server_facts_at(server_url: str) -> dict[str, str]:
    """`server_facts` of the server at `server_url`, on a connection of its own."""
    engine = create_engine(make_url(server_url).set(drivername="postgresql+psycopg"), poolclass=NullPool)
    try:
        return server_facts(engine)
    finally:
        engine.dispose()
