"""Composition: the one place that picks the sink's parts from its settings."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, make_url

from runtime import urls
from runtime.backoff import Backoff
from runtime.kafka import BrokerCheck
from runtime.observe import Endpoints
from runtime.startup import StartWindow
from sink import names
from sink.catalogue import create_bookkeeping
from sink.consumer import WarehouseConsumer
from sink.errors import SinkError, WarehouseError
from sink.mapping import TableMapping
from sink.partitions import reach
from sink.service import Sink
from sink.settings import SinkSettings
from sink.writer import SqlWriter

log = logging.getLogger(names.LOGGER)
REACH_SECONDS = 5.0  # per attempt to reach Kafka at start-up; then its failure is said, and retried


def warehouse_url(settings: SinkSettings) -> str:
    """The warehouse URL, with plain `postgresql://` meaning psycopg 3 (the driver with COPY)."""
    url = make_url(settings.warehouse_url.get_secret_value())
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


@contextmanager
def warehouse(settings: SinkSettings) -> Iterator[Engine]:
    """An engine on the warehouse with the bookkeeping tables in place, disposed after use (for
    the tools: status, replay)."""
    engine = urls.engine(warehouse_url(settings))
    try:
        create_bookkeeping(engine)
        yield engine
    finally:
        engine.dispose()


def by_topic(mappings: Iterable[TableMapping]) -> dict[str, list[TableMapping]]:
    """The tables each topic feeds."""
    found: dict[str, list[TableMapping]] = {}
    for mapping in mappings:
        found.setdefault(mapping.topic, []).append(mapping)
    return found


def tune_gc(young: int = 100_000) -> None:
    """For a process that runs only the sink (`outboxkit sink run`): each batch allocates some
    100k short-lived, acyclic objects, so the default young-generation threshold (700) makes the
    collector run thousands of times per million events for nothing; measured, 20-25 % of the
    sink's CPU. Objects alive at start are frozen out of the collections altogether."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young, 50, 100)


def sink_from_settings(settings: SinkSettings) -> Sink:
    """The sink, once its warehouse and Kafka answered (waited for up to `start_timeout`), its
    metrics and probes served from the start: live and not ready while it waits."""
    endpoints = Endpoints(settings.http_port, settings.http_host, services=(settings.kafka.client_log,))
    try:
        return _started_sink(settings, endpoints)
    except BaseException:
        endpoints.close()
        raise


def _started_sink(settings: SinkSettings, endpoints: Endpoints) -> Sink:
    starting = StartWindow(settings.start_timeout)
    engine = urls.engine(warehouse_url(settings))
    waiting = endpoints.health.turned
    writer = starting.retry(
        "preparing the warehouse",
        lambda: SqlWriter(engine, settings.tables, max_version_jump=settings.max_version_jump),
        WarehouseError,
        backoff=Backoff(maximum=settings.max_backoff),
        log=log,
        waiting=waiting,
    )
    starting.retry(
        "reaching Kafka",
        lambda: reach(settings.kafka, timeout=min(REACH_SECONDS, max(1.0, starting.left))),
        SinkError,
        backoff=Backoff(maximum=settings.max_backoff),
        log=log,
        waiting=waiting,
    )
    consumer = WarehouseConsumer(
        settings.kafka,
        settings.group_id,
        settings.topics,
        lambda topics: writer.stored_offsets(settings.group_id, topics),
        isolation_level=settings.isolation_level,
        instance_id=settings.group_instance_id,
    )
    return Sink(
        consumer,
        writer,
        settings.group_id,
        by_topic(settings.tables),
        batch_size=settings.batch_size,
        poll_timeout=settings.poll_timeout,
        max_record_bytes=settings.max_record_bytes,
        poison_policy=settings.poison_policy,
        backoff=Backoff(maximum=settings.max_backoff),
        endpoints=endpoints,
        verifier=settings.verifier,
        kafka_check=BrokerCheck(settings.kafka),
    )
