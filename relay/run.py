"""The relay loop: leases -> capture -> publish (with checkpoint) -> repeat. Deliberately thin.

All guarantees live in the parts: the capture source's commit order, the publisher's transaction
that carries the checkpoint, the leases that give each shard one publisher, Kafka's fencing behind
them. The loop only keeps positions in memory, retries what librdkafka calls retriable or
abortable (and a database or broker that is away), and stops on anything fatal. A stop request is
honoured between transactions, so SIGTERM never leaves one open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Tracer
from sqlalchemy import Engine, create_engine

from outbox.backoff import Backoff
from outbox.envelope import Envelope
from outbox.observe import Health, Metrics, serve
from outbox.tracing import span_context_from
from relay.capture import Backlog, CaptureSource, Position, capture_for
from relay.checkpoint import Checkpoints
from relay.errors import (
    CaptureError,
    FencedError,
    KafkaFatalError,
    LeaseLostError,
    PublishAbortedError,
    RelayError,
    UnpublishableRecordError,
)
from relay.leases import AdvisoryLeases, Leases, SoleLease
from relay.publisher import TransactionalPublisher
from relay.quarantine import Quarantine
from relay.settings import RelaySettings
from relay.shards import Shard
from relay.wakeup import Listener

log = logging.getLogger("outboxkit.relay")


@dataclass(frozen=True)
class Cleanup:
    """Deleting published rows: `batch` rows per statement, for at most `budget` seconds every
    `interval` seconds, keeping rows younger than `retention` seconds."""

    interval: float = 5.0
    batch: int = 5000
    budget: float = 1.0
    retention: float = 0.0


@dataclass
class RelayStats:
    published: int = 0
    transactions: int = 0
    aborted: int = 0
    quarantined: int = 0
    deleted: int = 0
    commit_seconds: float = 0.0
    position: Position = field(default_factory=Position)


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
        links = [Link(context) for context in _contexts(envelopes)]
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


class RelayService:
    """Runs a relay for every shard this process holds a lease on; the sidecar's main loop."""

    def __init__(
        self,
        leases: Leases,
        relay_for: Callable[[Shard], Relay],
        *,
        poll_interval: float = 0.5,
        lease_interval: float = 1.0,
        cleanup: Cleanup | None = None,
        listener: Listener | None = None,
        http_port: int | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._relay_for = relay_for
        self._poll_interval = poll_interval
        self._lease_interval = lease_interval
        self._cleanup = cleanup
        self._next_cleanup = 0.0
        self._idle = listener.wait if listener is not None else sleep
        self._listener = listener
        self._http_port = http_port
        self.health = Health()
        self.metrics = self._metrics()
        self._retired = RelayStats()  # totals of relays whose shard this process gave up
        self._backoff = backoff or Backoff(sleep=sleep)
        self._sleep = sleep
        self._clock = clock
        self._active: dict[Shard, Relay] = {}
        self._held: frozenset[Shard] = frozenset()
        self._next_refresh = 0.0

    @property
    def active(self) -> frozenset[Shard]:
        return frozenset(self._active)

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> RelayStats:
        """Loop until `should_stop()`; with `drain`, also stop once the held shards are caught up."""
        server = serve(self._http_port, self.metrics, self.health) if self._http_port is not None else None
        try:
            while not should_stop():
                self._refresh_leases()
                try:
                    published = self._step_all()
                except RelayError as exc:
                    if not should_stop() or isinstance(exc, FencedError):
                        raise
                    log.warning("stopping with Kafka unreachable: %s", exc)
                    break
                self._clean_up()
                self.health.beat(ok=published is not None)
                if published is None:
                    continue  # a failure: the backoff has already waited
                self._backoff.reset()
                if published == 0:
                    if drain and self._held <= self._active.keys():
                        break
                    self._idle(self._poll_interval)
        finally:
            for relay in self._active.values():
                relay.close()
            self._leases.close()
            if self._listener is not None:
                self._listener.close()
            if server is not None:
                server.shutdown()
        return self.stats()

    def stats(self) -> RelayStats:
        """Totals since start; the position is the first active shard's."""
        relays = [self._active[shard] for shard in sorted(self._active)]
        total = RelayStats(position=relays[0].stats.position if relays else Position())
        for stats in [self._retired, *(relay.stats for relay in relays)]:
            total.published += stats.published
            total.transactions += stats.transactions
            total.aborted += stats.aborted
            total.quarantined += stats.quarantined
            total.deleted += stats.deleted
            total.commit_seconds += stats.commit_seconds
        return total

    def _metrics(self) -> Metrics:
        metrics = Metrics()
        for name, text in (
            ("published", "events published (committed to Kafka)"),
            ("transactions", "Kafka transactions committed"),
            ("aborted", "Kafka transactions aborted and retried"),
            ("quarantined", "outbox rows Kafka refused for good, moved to outbox_quarantine"),
            ("deleted", "published outbox rows deleted by cleanup"),
            ("commit_seconds", "seconds spent producing and committing Kafka transactions"),
        ):
            metrics.counter(f"outboxkit_relay_{name}_total", text, partial(self._total, name))
        metrics.gauge(
            "outboxkit_relay_shards_held", "shards this relay publishes", lambda: float(len(self._active))
        )
        metrics.gauge(
            "outboxkit_relay_backlog_events", "committed events not yet published", self._backlog_rows
        )
        metrics.gauge(
            "outboxkit_relay_oldest_unpublished_seconds",
            "age of the oldest unpublished event",
            self._oldest_age,
        )
        return metrics

    def _total(self, name: str) -> float:
        return float(getattr(self.stats(), name))

    def _backlogs(self) -> list[Backlog]:
        return [relay.backlog() for relay in list(self._active.values())]

    def _backlog_rows(self) -> float:
        return float(sum(backlog.rows for backlog in self._backlogs()))

    def _oldest_age(self) -> float:
        oldest = [backlog.oldest for backlog in self._backlogs() if backlog.oldest is not None]
        return (datetime.now(UTC) - min(oldest)).total_seconds() if oldest else 0.0

    def _refresh_leases(self) -> None:
        if self._clock() < self._next_refresh:
            return
        self._next_refresh = self._clock() + self._lease_interval
        try:
            self._held = self._leases.refresh()
        except LeaseLostError as exc:
            log.warning("%s; standing by until a lease can be taken again", exc)
            self._held = frozenset()
        for shard in self._active.keys() - self._held:
            log.warning("no longer holds the lease of %s: stopped publishing it", shard)
            gone = self._active.pop(shard)
            gone.close()
            self._retire(gone.stats)
        for shard in sorted(self._held - self._active.keys()):
            try:
                self._active[shard] = self._relay_for(shard)
            except (FencedError, KafkaFatalError):
                raise
            except RelayError as exc:
                log.warning("cannot start publishing %s yet (%s); retrying", shard, exc)

    def _retire(self, stats: RelayStats) -> None:
        for name in ("published", "transactions", "aborted", "quarantined", "deleted", "commit_seconds"):
            setattr(self._retired, name, getattr(self._retired, name) + getattr(stats, name))

    def _clean_up(self) -> None:
        if self._cleanup is None or self._clock() < self._next_cleanup:
            return
        self._next_cleanup = self._clock() + self._cleanup.interval
        created_before = (
            datetime.now(UTC) - timedelta(seconds=self._cleanup.retention)
            if self._cleanup.retention
            else None
        )
        deadline = self._clock() + self._cleanup.budget
        for relay in self._active.values():
            try:
                while relay.delete_published(self._cleanup.batch, created_before) == self._cleanup.batch:
                    if self._clock() > deadline:
                        return  # the rest next time: publishing comes first
            except CaptureError as exc:
                log.warning("cleanup postponed: %s", exc)

    def _step_all(self) -> int | None:
        published = 0
        for relay in list(self._active.values()):
            try:
                published += relay.step()
            except (CaptureError, PublishAbortedError) as exc:
                relay.stats.aborted += isinstance(exc, PublishAbortedError)
                log.warning("%s; retried after %.1fs", exc, self._backoff.wait())
                return None
        return published


def _contexts(envelopes: list[Envelope], most: int = 128) -> list[SpanContext]:
    """The write-time span contexts of the first `most` events: a bounded cost per batch."""
    found: list[SpanContext] = []
    for envelope in envelopes[:most]:
        if not envelope.extra_headers:
            continue  # written outside any span: nothing to extract
        headers = {name: value.decode(errors="replace") for name, value in envelope.extra_headers}
        context = span_context_from(headers)
        if context is not None:
            found.append(context)
    return found


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
        backoff=Backoff(maximum=settings.max_backoff),
    )


def _started_relay(
    settings: RelaySettings, engine: Engine, shard: Shard, stopping: Callable[[], bool]
) -> Relay:
    publisher = TransactionalPublisher(
        settings.kafka,
        settings.transactional_id + shard.suffix,
        timeout=settings.kafka_timeout,
        stopping=stopping,
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
