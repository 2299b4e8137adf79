"""The Dramatiq app tests/test_jobs_e2e.py runs as real worker processes, as a user's would be:

    python -m dramatiq tests.jobs_app --processes 1 --threads 8

Configured by `OUTBOXKIT_TEST_JOBS_*` (`AppSettings`) and, for tracing, the standard `OTEL_*`
variables (`runtime.telemetry.tracer_provider`: spans over OTLP/HTTP when an endpoint is set).
Its broker comes from `jobs.delivery.broker_from_url`, the dispatcher's own, so both sides read
the same keys; the actors' writes go through `@inbox.exactly_once` (tables: tests/jobs_app_tables.py).
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import MAINTENANCE_SCALE
from opentelemetry import trace
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from jobs.delivery import broker_from_url
from jobs.inbox import Inbox, current_message
from runtime.telemetry import tracer_provider
from tests.jobs_app_tables import (
    FAILS_UNTIL_FIXED,
    MAX_RETRIES,
    RECORD_EFFECT,
    deliveries,
    effects,
    fixed,
    parked,
    released,
)


class AppSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_TEST_JOBS_")

    db_url: str
    broker_url: str
    queue: str
    # Low, so the messages of a killed worker come back soon: Redis requeues them only once the
    # dead worker's last heartbeat is this old (Dramatiq's default is 60 s).
    heartbeat_timeout_ms: int = 4000


class LogDeliveries(dramatiq.Middleware):
    """One `deliveries` row per message handed to this worker, before the inbox decides anything."""

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        with engine.begin() as conn:
            conn.execute(
                insert(deliveries).values(message_id=message.message_id, actor_name=message.actor_name)
            )


SETTINGS = AppSettings()
engine = create_engine(SETTINGS.db_url, pool_pre_ping=True, pool_size=10)
inbox = Inbox(engine)
provider = tracer_provider("jobs-e2e-worker")
if provider is not None:
    trace.set_tracer_provider(provider)
# Queue maintenance (requeueing a dead worker's messages) on every command, not on 0.1 % of them.
broker = broker_from_url(
    SETTINGS.broker_url, heartbeat_timeout=SETTINGS.heartbeat_timeout_ms, maintenance_chance=MAINTENANCE_SCALE
)
broker.add_middleware(LogDeliveries())
broker.add_middleware(inbox.middleware)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=RECORD_EFFECT, queue_name=SETTINGS.queue)
@inbox.exactly_once
def record_effect(session: Session, n: int, park: bool = False) -> None:
    """One `effects` row; with `park`, wait inside the transaction until the test releases job n."""
    session.execute(insert(effects).values(message_id=current_message().message_id, n=n))
    if park:
        session.flush()
        _park(n)


def _park(n: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(parked).values(n=n))
    while True:
        with engine.connect() as conn:
            if conn.scalar(select(released.c.n).where(released.c.n == n)) is not None:
                return
        time.sleep(0.1)


@dramatiq.actor(
    actor_name=FAILS_UNTIL_FIXED,
    queue_name=SETTINGS.queue,
    max_retries=MAX_RETRIES,
    min_backoff=100,
    max_backoff=300,
)
@inbox.exactly_once
def fails_until_fixed(session: Session, n: int) -> None:
    """Raises until the test marks job n fixed; then one `effects` row."""
    if not session.scalar(select(fixed.c.ok).where(fixed.c.n == n)):
        raise RuntimeError(f"job {n} is not fixed yet")
    session.execute(insert(effects).values(message_id=current_message().message_id, n=n))
