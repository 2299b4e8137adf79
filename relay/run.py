"""A relay for one shard — capture -> publish, the checkpoint in the same Kafka transaction —
and the composition of the relay service from settings.

The guarantees live in the parts it holds: the capture source's commit order and the publisher's
transaction that carries the checkpoint. `relay.service` runs one relay per shard this process
holds a lease on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Tracer
from sqlalchemy import Engine, create_engine

from relay.capture import Backlog, CaptureSource, Position, capture_for
from relay.checkpoint import Checkpoints
from relay.errors import RelayError, UnpublishableRecordError
from relay.leases import AdvisoryLeases, Leases, SoleLease
from relay.publisher import TransactionalPublisher
from relay.quarantine import Quarantine
from relay.service import Cleanup, RelayService
from relay.settings import RelaySettings
from relay.shards import Shard
from relay.stats import RelayStats
from relay.wakeup import Listener
from runtime.backoff import Backoff
from runtime.tracing import span_contexts
from wire import Envelope

log = logging.getLogger("outboxkit.relay")


class Relay:
    """Publishes one shard of an outbox to Kafka, exactly once for read_committed consumers."""

    def __init__(
        self,
        capture: CaptureSource,
        publisher: TransactionalPublisher,
        checkpoints: Checkpoints,
        quarantine: Quarantine,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        tracer: Tracer | None = None,
    ) -> None:
        self._capture = capture
        self._publisher = publisher
        self._checkpoints = checkpoints
        self._quarantine = quarantine
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._backoff = backoff or Backoff(sleep=sleep)
        self._sleep = sleep
        self._isolating = 0  # records left to publish one per transaction, to find a refused one
        self._tracer = tracer or trace.get_tracer("outboxkit.relay")
        self.stats = RelayStats()

    def start(self) -> None:
        """Fence older instances, then resume from the committed checkpoint (in that order)."""
        self._checkpoints.ensure_topic()
        self._publisher.start()
        self.stats.position = self._checkpoints.read()
        log.info("relay of %s resuming after %s", self._checkpoints.key, self.stats.position)

    def step(self) -> int:
        """Publish the next batch, if any, in one transaction; return how many events it held.

        When Kafka refuses a record for good, the broker may report it for every record that
        shared its request, so the culprit is not known yet: the records of that batch are then
        published one per transaction, and only one that fails alone is quarantined.
        """
        while True:
            limit = 1 if self._isolating else self._batch_size
            batch = self._capture.fetch(self.stats.position, limit)
            envelopes = [record.envelope for record in batch.records]
            try:
                if envelopes:
                    self._publish(envelopes, batch.position)
            except UnpublishableRecordError as exc:
                if len(envelopes) > 1:
                    self._isolating = len(envelopes)
                    log.warning("%s; finding the refused record one transaction at a time", exc)
                else:
                    self._quarantine.move(batch.records[exc.index].id, exc.reason)
                    self.stats.quarantined += 1
                continue
            break
        self._isolating = max(0, self._isolating - len(envelopes))
        if envelopes:
            self.stats.published += len(envelopes)
            self.stats.transactions += 1
            log.debug(
                "committed Kafka transaction with %d events, checkpoint after %s",
                len(envelopes),
                batch.position,
            )
        self.stats.position = batch.position
        return len(batch.records)

    def _publish(self, envelopes: list[Envelope], position: Position) -> None:
        """One Kafka transaction, in a span linked to the spans the events were written in."""
        links = [Link(context) for context in span_contexts(e.extra_headers for e in envelopes)]
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.batch.message_count": len(envelopes),
        }
        with self._tracer.start_as_current_span(
            "outboxkit.relay publish", kind=SpanKind.PRODUCER, links=links, attributes=attributes
        ):
            started = time.monotonic()
            self._publisher.publish(envelopes, self._checkpoints.record(position))
            self.stats.commit_seconds += time.monotonic() - started

    def backlog(self) -> Backlog:
        return self._capture.backlog(self.stats.position)

    def delete_published(self, limit: int, created_before: datetime | None) -> int:
        """Delete up to `limit` outbox rows this relay has published (and committed to Kafka)."""
        deleted = self._capture.delete_published(self.stats.position, limit, created_before)
        self.stats.deleted += deleted
        return deleted

    def close(self) -> None:
        self._publisher.close()

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> RelayStats:
        """Run this (started) relay alone until `should_stop()`, or with `drain` until caught up."""
        service = RelayService(
            SoleLease(),
            lambda _: self,
            poll_interval=self._poll_interval,
            backoff=self._backoff,
            sleep=self._sleep,
        )
        service.run(should_stop, drain=drain)
        return self.stats


def relay_from_settings(
    settings: RelaySettings, stopping: Callable[[], bool] = lambda: False
) -> RelayService:
    """Compose the relay service from its settings: the one place that picks the parts.

    `stopping` is the process's stop request (SIGTERM): Kafka calls that would retry stop waiting.
    """
    # No pool_pre_ping: a connection lost to a database restart fails one fetch, the pool drops
    # it, and the retry gets a new one — cheaper than a ping before every fetch.
    engine = create_engine(settings.database_url.get_secret_value())
    leases: Leases = (
        AdvisoryLeases(
            engine,
            settings.source_id,
            settings.shards,
            max_held=settings.max_shards,
            interval=settings.lease_interval,
            timeout=settings.lease_timeout,
        )
        if engine.dialect.name == "postgresql"
        else SoleLease()
    )
    return RelayService(
        leases,
        lambda shard: _started_relay(settings, engine, shard, stopping),
        poll_interval=settings.poll_interval,
        lease_interval=settings.lease_interval,
        cleanup=Cleanup(retention=settings.retention) if settings.cleanup else None,
        listener=(
            Listener(engine, settings.notify_channel)
            if engine.dialect.name == "postgresql" and settings.notify_channel
            else None
        ),
        http_port=settings.http_port,
        http_host=settings.http_host,
        backoff=Backoff(maximum=settings.max_backoff),
        start_timeout=settings.start_timeout,
    )


def _started_relay(
    settings: RelaySettings, engine: Engine, shard: Shard, stopping: Callable[[], bool]
) -> Relay:
    publisher = TransactionalPublisher(
        settings.kafka,
        settings.transactional_id + shard.suffix,
        timeout=settings.kafka_timeout,
        stopping=stopping,
        signer=settings.signer,
    )
    relay = Relay(
        capture_for(engine, shard),
        publisher,
        Checkpoints(settings.kafka, settings.checkpoint_topic, settings.source_id, shard),
        Quarantine(engine),
        batch_size=settings.batch_size,
    )
    try:
        relay.start()
    except RelayError:
        relay.close()
        raise
    return relay
