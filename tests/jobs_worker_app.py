"""The Dramatiq app tests/test_jobs_worker.py runs as real worker processes:

    python -m dramatiq tests.jobs_worker_app --processes 1 --threads 2

Configured by `OUTBOXKIT_TEST_WORKER_*` (see `WorkerSettings`). Its actors write an `effects` row
through `@inbox.exactly_once`; `hold` parks a job, by file flags in `flags`, at the point a test
kills the worker: inside the actor's transaction, or after its commit and before the broker's ack.
Spans go to `flags/spans.jsonl` through the OpenTelemetry SDK, configured here as a worker app does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from jobs.inbox import Inbox, current_message
from tests.jobs_worker_tables import effects, switches


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_TEST_WORKER_")

    db_url: str
    broker_url: str
    namespace: str = "dramatiq"  # Redis key prefix: one per test, Redis is shared
    queue: str
    flags: Path
    retention_seconds: float = 7 * 86400
    prune_interval: float = 600
    # Low, so a killed worker's messages come back soon: Redis requeues them only once its last
    # heartbeat is this old (Dramatiq's default is 60 s).
    heartbeat_timeout_ms: int = 3000


class FileExporter(SpanExporter):
    """One JSON line per finished span, so the test process can read the worker's spans."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._path.open("a") as out:
            for span in spans:
                out.write(json.dumps(_as_json(span)) + "\n")
        return SpanExportResult.SUCCESS


def _as_json(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


class HoldBeforeAck(dramatiq.Middleware):
    """Parks a `hold="before_ack"` message after its transaction committed, before the ack."""

    def before_ack(self, broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> None:
        if message.kwargs.get("hold") == "before_ack":
            park(message.kwargs["key"])


def park(key: str) -> None:
    """Say the job got here, then wait until the test releases it (or kills the worker)."""
    (SETTINGS.flags / f"started-{key}").touch()
    while not (SETTINGS.flags / "release").exists():
        time.sleep(0.05)


def make_broker(settings: WorkerSettings) -> dramatiq.Broker:
    if settings.broker_url.startswith("amqp"):
        return RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    # Queue maintenance (the requeue of a dead worker's messages) on every command, not on 0.1 %.
    return RedisBroker(
        url=settings.broker_url,
        namespace=settings.namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        maintenance_chance=MAINTENANCE_SCALE,
    )


SETTINGS = WorkerSettings()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter(SETTINGS.flags / "spans.jsonl")))
trace.set_tracer_provider(provider)

inbox = Inbox(
    create_engine(SETTINGS.db_url),
    retention=timedelta(seconds=SETTINGS.retention_seconds),
    prune_interval=SETTINGS.prune_interval,
)
broker = make_broker(SETTINGS)
broker.add_middleware(inbox.middleware)
broker.add_middleware(HoldBeforeAck())
dramatiq.set_broker(broker)


def _effect(session: Session, key: str) -> None:
    session.execute(insert(effects).values(message_id=current_message().message_id, key=key))


@dramatiq.actor(queue_name=SETTINGS.queue)
@inbox.exactly_once
def record(session: Session, key: str, hold: str | None = None) -> None:
    _effect(session, key)
    if hold == "in_transaction":
        session.flush()  # the effect is written, not committed, when the worker dies
        park(key)


@dramatiq.actor(queue_name=SETTINGS.queue, max_retries=1, min_backoff=100, max_backoff=200)
@inbox.exactly_once
def flaky(session: Session, key: str) -> None:
    with (SETTINGS.flags / f"attempts-{key}").open("a") as attempts:
        attempts.write("attempt\n")
    if not session.scalar(select(switches.c.fixed).where(switches.c.name == key)):
        raise RuntimeError(f"{key} is not fixed yet")
    _effect(session, key)
