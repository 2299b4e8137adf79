"""Where a demo run happens: its settings, app database, topics, warehouse, and job queue.

SQLite and DuckDB files live in a work directory (the e-mail service's `worker.db` too);
PostgreSQL databases are made afresh on the server for each run (and kept afterwards, to look at).
Topic and queue names carry the run's id, so runs never see each other's events or jobs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from jobs.delivery import DramatiqDelivery, broker_from_url
from jobs.errors import BrokerUnavailableError
from jobs.settings import JobsSettings
from outbox import OutboxSettings, schema
from outboxkit.databases import app_engine, create_database, server
from outboxkit.demo.mailer import Mailer
from outboxkit.demo.shop import Base
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings
from sink import TableMapping


class DemoSettings(BaseSettings):
    """`OUTBOXKIT_DEMO_*`, or the command's flags. Kafka, Redis and the PostgreSQL server default to
    what `scripts/services` runs (`OUTBOXKIT_KAFKA_BOOTSTRAP`, `OUTBOXKIT_REDIS_URL`, `OUTBOXKIT_PG_URL`)."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_DEMO_", env_file=".env", extra="ignore", populate_by_name=True
    )

    seconds: float = Field(20.0, ge=0, description="How long the shop writes (0: until Ctrl-C).")
    rate: float = Field(150.0, gt=0, description="Events per second the shop offers.")
    writers: int | None = Field(
        None, ge=1, description="Writer threads (default: 1 on SQLite, 4 on PostgreSQL)."
    )
    app_db: Literal["sqlite", "postgres"] = "sqlite"
    warehouse: Literal["duckdb", "postgres"] = "duckdb"
    progress_every: float = Field(2.0, gt=0, description="Seconds between progress lines.")
    drain_timeout: float = Field(
        120.0, gt=0, description="How long the pipeline may take to catch up at the end."
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:19092",
        validation_alias=AliasChoices("OUTBOXKIT_DEMO_KAFKA_BOOTSTRAP", "OUTBOXKIT_KAFKA_BOOTSTRAP"),
    )
    redis: str = Field(  # not `redis_url`: the command names every *_url setting as a database
        "redis://127.0.0.1:56379/0",
        validation_alias=AliasChoices("OUTBOXKIT_DEMO_REDIS_URL", "OUTBOXKIT_REDIS_URL"),
        description="The Redis URL of the Dramatiq broker the dispatcher delivers the jobs to and the "
        "worker consumes.",
    )
    pg_url: str = Field(
        "postgresql://outboxkit@127.0.0.1:55432/outboxkit",
        validation_alias=AliasChoices("OUTBOXKIT_DEMO_PG_URL", "OUTBOXKIT_PG_URL"),
        description="The server the PostgreSQL options make their databases on.",
    )
    pg_databases: tuple[str, str] = Field(
        ("outboxkit_demo_app", "outboxkit_demo_warehouse"),
        description="Names of the app database and the warehouse there (replaced at each run).",
    )


@dataclass(frozen=True)
class Stage:
    """One run's places and names."""

    run: str
    app_url: str
    warehouse_url: str
    kafka: KafkaSettings
    outbox: OutboxSettings
    worker_url: str  # the e-mail service's own database
    redis_url: str

    @property
    def queue(self) -> str:
        """The run's Dramatiq queue: the dispatcher fills it, the worker empties it."""
        return f"outboxkit-demo.{self.run}"

    @property
    def jobs(self) -> JobsSettings:
        """The dispatcher's settings: the run's jobs topic, into the run's Redis, a group of its own."""
        return JobsSettings(
            kafka=self.kafka,
            broker_url=SecretStr(self.redis_url),
            topic=self.outbox.jobs_topic,
            group_id=f"outboxkit-demo-{self.run}",
            poll_timeout=0.2,
        )

    def topic(self, aggregate_type: str) -> str:
        return self.outbox.topic_template.format(aggregate_type=aggregate_type)

    @property
    def mappings(self) -> list[TableMapping]:
        """Per aggregate its current state (upsert) and its every event (append)."""
        customer, order = self.topic("customer"), self.topic("order")
        return [
            TableMapping(topic=customer, table="customers", mode="upsert"),
            TableMapping(topic=customer, table="customer_events", mode="append"),
            TableMapping(
                topic=order,
                table="orders",
                mode="upsert",
                event_types=("OrderPlaced", "OrderUpdated", "OrderCancelled"),  # not OrderShipped
                delete_types=("OrderCancelled",),
            ),
            TableMapping(topic=order, table="order_events", mode="append"),
        ]

    def describe(self, url: str) -> str:
        parsed = make_url(url)
        kind = {"sqlite": "SQLite", "duckdb": "DuckDB"}.get(parsed.get_backend_name(), "PostgreSQL")
        where = parsed.database if kind != "PostgreSQL" else parsed.render_as_string(hide_password=True)
        return f"{kind} {where}"


def prepare(settings: DemoSettings, workdir: Path) -> Stage:
    """Make the run's app database (outbox and shop tables), warehouse place, the e-mail service's
    database (its inbox and confirmations tables) and topics."""
    _check_redis(settings.redis)
    run = uuid.uuid4().hex[:8]
    files = ("app.db", "warehouse.duckdb", "warehouse.duckdb.wal", "worker.db")
    for name in (*files, *(f"{db}-{suffix}" for db in ("app.db", "worker.db") for suffix in ("wal", "shm"))):
        (workdir / name).unlink(missing_ok=True)  # the last run's files: each run starts empty
    app_db, warehouse = settings.pg_databases
    app_url = (
        create_database(server(settings.pg_url), app_db, replace=True)
        if settings.app_db == "postgres"
        else f"sqlite:///{workdir / 'app.db'}"
    )
    warehouse_url = (
        create_database(server(settings.pg_url), warehouse, replace=True)
        if settings.warehouse == "postgres"
        else f"duckdb:///{workdir / 'warehouse.duckdb'}"
    )
    engine = app_engine(app_url, 1)
    schema.upgrade(engine)  # the outbox tables, by the same migrations as `outboxkit migrate`
    Base.metadata.create_all(engine)
    engine.dispose()
    stage = Stage(
        run,
        app_url,
        warehouse_url,
        KafkaSettings(bootstrap_servers=settings.kafka_bootstrap),
        OutboxSettings(
            topic_template=f"outboxkit-demo.{run}.{{aggregate_type}}", jobs_topic=f"outboxkit-demo.{run}.jobs"
        ),
        f"sqlite:///{workdir / 'worker.db'}",
        settings.redis,
    )
    mailer = Mailer(stage.worker_url)
    mailer.migrate()
    mailer.close()
    for topic in (stage.topic("customer"), stage.topic("order"), stage.outbox.jobs_topic):
        ensure_topic(stage.kafka, topic, partitions=3)
    return stage


def _check_redis(url: str) -> None:
    """Refuse to start without the job broker: the jobs would wait for it until the drain timed out."""
    delivery = DramatiqDelivery(broker_from_url(url))
    try:
        why = delivery.unreachable()
    finally:
        delivery.close()
    if why is not None:  # the URL stays out of the message: it may hold a password
        raise BrokerUnavailableError(
            f"{why} at OUTBOXKIT_DEMO_REDIS_URL (or OUTBOXKIT_REDIS_URL); `scripts/services up redis` "
            "starts the local one"
        )
