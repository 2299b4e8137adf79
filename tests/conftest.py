"""Session fixtures for the real services: Kafka, PostgreSQL, Redis, RabbitMQ on loopback.

`scripts/services up` (run by `make test`) starts them; each can instead be an external instance
named by OUTBOXKIT_KAFKA_BOOTSTRAP, OUTBOXKIT_PG_URL, OUTBOXKIT_REDIS_URL or OUTBOXKIT_RABBITMQ_URL.
A missing service skips its tests locally and fails them under CI=true, so CI can never pass by
skipping.
Tests are isolated by unique names (topics, databases, schemas, groups), never by restarts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from relay import Relay
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings
from tests.helpers import make_relay, sqlite_app
from tests.otlp import Collector


class Endpoints(BaseSettings):
    """Where the test services are: the same variables scripts/services honours. A service named
    by its URL is external; the others are scripts/services' own on loopback, at the ports it
    starts them on (OUTBOXKIT_KAFKA_PORT and so on: a private stack), which tests may restart."""

    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_", extra="ignore")

    kafka_port: int = 19092
    pg_port: int = 55432
    redis_port: int = 56379
    rabbitmq_port: int = 55672
    kafka_bootstrap: str = ""
    pg_url: str = ""
    redis_url: str = ""
    rabbitmq_url: str = ""
    state_dir: Path = Path("/var/tmp/outboxkit")
    cache_dir: Path | None = None
    ci: bool = Field(False, validation_alias="CI")

    @model_validator(mode="after")
    def _local_services(self) -> Endpoints:
        self.kafka_bootstrap = self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"
        self.pg_url = self.pg_url or f"postgresql://outboxkit@127.0.0.1:{self.pg_port}/outboxkit"
        self.redis_url = self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"
        self.rabbitmq_url = (
            self.rabbitmq_url or f"amqp://outboxkit:outboxkit@127.0.0.1:{self.rabbitmq_port}/%2F"
        )
        return self


ENDPOINTS = Endpoints()


def unavailable(service: str, why: object) -> None:
    message = f"{service} is not reachable ({why}); start it with `scripts/services up`"
    if ENDPOINTS.ci:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    settings = KafkaSettings(bootstrap_servers=ENDPOINTS.kafka_bootstrap)
    try:
        AdminClient(settings.client_config()).list_topics(timeout=10)
    except KafkaException as exc:
        unavailable(f"Kafka at {ENDPOINTS.kafka_bootstrap}", exc)
    return settings


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names that tie a resource to its test and never collide across runs."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def new_topic(kafka: KafkaSettings, unique_name: Callable[[str], str]) -> Callable[..., str]:
    def make(partitions: int = 1) -> str:
        name = unique_name("t")
        ensure_topic(kafka, name, partitions=partitions)
        return name

    return make


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own for this test session (dropped at the end), as a SQLAlchemy URL."""
    server = make_url(ENDPOINTS.pg_url).set(drivername="postgresql+psycopg")
    admin = create_engine(server, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # outlives restarts
    name = f"outboxkit_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        unavailable(f"PostgreSQL at {ENDPOINTS.pg_url}", exc.orig)
    yield server.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass(frozen=True)
class PgSchema:
    """A fresh schema in the session's database; connections see only it (search_path)."""

    url: str
    name: str

    @property
    def connect_args(self) -> dict[str, str]:
        return {"options": f"-csearch_path={self.name}"}


@pytest.fixture
def pg_schema(pg_database: str, unique_name: Callable[[str], str]) -> Iterator[PgSchema]:
    schema = PgSchema(pg_database, unique_name("s").replace("-", "_"))
    admin = create_engine(pg_database, pool_pre_ping=True)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema.name}"'))
    yield schema
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema.name}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_engine(pg_schema: PgSchema) -> Iterator[Engine]:
    """A sync engine on a fresh schema, so each test sees only its own tables."""
    engine = create_engine(pg_schema.url, connect_args=pg_schema.connect_args)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis  # noqa: PLC0415 - comes with dramatiq[redis]

    client = redis.Redis.from_url(ENDPOINTS.redis_url, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis at {ENDPOINTS.redis_url}", exc)
    finally:
        client.close()
    return ENDPOINTS.redis_url


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    import pika  # noqa: PLC0415 - comes with dramatiq[rabbitmq]
    from pika.exceptions import AMQPError  # noqa: PLC0415

    parameters = pika.URLParameters(ENDPOINTS.rabbitmq_url)
    parameters.socket_timeout = parameters.blocked_connection_timeout = 5
    try:
        pika.BlockingConnection(parameters).close()
    except AMQPError as exc:  # refused, timed out and a refused login alike
        unavailable(f"RabbitMQ at {ENDPOINTS.rabbitmq_url}", repr(exc))
    return ENDPOINTS.rabbitmq_url


@dataclass
class Source:
    """One SQLite outbox, its topic, and a way to start relays for it (all with one source id)."""

    app: Engine
    topic: str
    relay: Callable[[], Relay]


@pytest.fixture
def source(
    kafka: KafkaSettings, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> Source:
    app, source_id, checkpoints = sqlite_app(tmp_path), unique_name("src"), unique_name("ckpt")

    def started_relay() -> Relay:
        relay = make_relay(app, kafka, source_id, checkpoints)
        relay.start()
        return relay

    return Source(app, new_topic(), started_relay)


@pytest.fixture(scope="session")
def kafka_classpath() -> str:
    """The Java classpath `scripts/services` resolved from Maven Central: Kafka's own reference."""
    cache = ENDPOINTS.cache_dir or ENDPOINTS.state_dir / "cache"
    jars = sorted(cache.glob("kafka-libs-*/kafka-clients-*.jar"))
    if not jars:
        unavailable("the kafka-clients jar", f"nothing under {cache}")
    return str(jars[-1].parent / "*")


# Every warehouse target. The contract suite (`test_sink_contract.py`, `test_sink_lakehouse.py`)
# and the sink's crash and rebalance tests run on each kind; the sink's other tests, about Kafka
# and the commands more than the warehouse, on the two SQL ones (DuckLake is the same SQL writer).
WAREHOUSES = ("duckdb", "postgresql", "ducklake", "ducklake+postgresql")


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Sink tests run against each warehouse target (see `url_of_warehouse`)."""
    return url_of_warehouse(request, tmp_path)


def url_of_warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new warehouse of the kind `request.param` names, so a sink process can be
    pointed at it too: PostgreSQL's carries the test's schema as search_path, DuckLake's
    PostgreSQL catalog lives in the test's schema too."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    if request.param == "ducklake":
        return f"ducklake:///{tmp_path / 'lake.ducklake'}"
    schema: PgSchema = request.getfixturevalue("pg_schema")
    if request.param == "ducklake+postgresql":
        url = make_url(schema.url).set(drivername="ducklake+postgresql")
        query = {"data_path": str(tmp_path / "lake"), "metadata_schema": schema.name}
        return url.update_query_dict(query).render_as_string(hide_password=False)
    url = make_url(schema.url).update_query_dict({"options": f"-csearch_path={schema.name}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def warehouse(warehouse_url: str) -> Iterator[Engine]:
    engine = create_engine(warehouse_url)
    yield engine
    engine.dispose()


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP trace endpoint for processes under test (`collector.endpoint`)."""
    running = Collector()
    yield running
    running.close()
