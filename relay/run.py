"""A relay for one shard — capture -> publish, the checkpoint in the same Kafka transaction —
the one factory that assembles it (`Relay.for_shard`), and the composition of the relay service
from settings.

The guarantees live in the parts it holds: the capture source's commit order and the publisher's
transaction that carries the checkpoint. `relay.service` runs one relay per shard this process
holds a lease on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Tracer
from sqlalchemy import Engine

from relay import names
from relay.capture import (
    Backlog,
    CapturedRow,
    CaptureMode,
    CaptureSource,
    Position,
    capture_for,
    expect_shards,
)
from relay.checkpoint import Checkpoints
from relay.dead_letters import DeadLetters
from relay.errors import PublishAbortedError, RelayError, UnpublishableRecordError
from relay.leases import AdvisoryLeases, Leases, SoleLease
from relay.publisher import TransactionalPublisher
from relay.service import Cleanup, RelayService
from relay.settings import RelaySettings
from relay.shards import ONLY, Shard
from relay.stats import RelayStats
from relay.wakeup import Listener
from runtime import urls
from runtime.backoff import Backoff
from runtime.kafka import BrokerCheck, KafkaSettings
from runtime.observe import Health, Histogram
from runtime.tracing import MESSAGING_KAFKA_KEY, messaging_attributes, span_contexts
from wire import Envelope, Signer

log = logging.getLogger(names.LOGGER)


class Relay:
    """Publishes one shard of an outbox to Kafka, exactly once for read_committed consumers."""

    def __init__(
        self,
        capture: CaptureSource,
        publisher: TransactionalPublisher,
        checkpoints: Checkpoints,
        dead_letters: DeadLetters,
        *,
        batch_size: int = 500,
        tracer: Tracer | None = None,
        latency: Histogram | None = None,
        heartbeat_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capture = capture
        self._publisher = publisher
        self._checkpoints = checkpoints
        self._dead_letters = dead_letters
        self._batch_size = batch_size
        self._isolating = 0  # records left to publish one per transaction, to find a refused one
        self._tracer = tracer or trace.get_tracer(names.TRACER)
        self._latency = latency  # commit -> published, of each event (`names.COMMIT_TO_PUBLISHED`)
        self._stats = RelayStats()
        self._heartbeat_interval = heartbeat_interval
        self._clock = clock
        self._checkpointed = Position()  # the position in Kafka: read at start, then each commit's
        self._checkpointed_at = clock()
        self._caught_up = True

    @classmethod
    def for_shard(
        cls,
        engine: Engine,
        kafka: KafkaSettings,
        source_id: str,
        checkpoint_topic: str,
        shard: Shard = ONLY,
        *,
        batch_size: int = 500,
        kafka_timeout: float = 30.0,
        stopping: Callable[[], bool] = lambda: False,
        signer: Signer | None = None,
        tracer: Tracer | None = None,
        latency: Histogram | None = None,
        waiting: Callable[[str], None] = lambda why: None,
        capture: CaptureMode | CaptureSource = "poll",
        heartbeat_interval: float = 0.0,
        cleanup: bool = True,
    ) -> Relay:
        """The relay of `shard` of source `source_id` (not started): the one place its parts are picked.
        `capture` reads the shard: a mode (`capture_for` picks the engine's source of it: polling by
        default, `wal`), or a source built by the caller (the capture contract suite's). With a
        `heartbeat_interval`, an idle relay checkpoints the position its source moved to that often
        (see `step`): what WAL capture needs to let its slot go of other tables' WAL. `cleanup`
        False: `delete_published` is never called (a WAL source then remembers nothing for it).

        Fencing depends on the transactional id (see `transactional_id`): the relay that starts
        for a shard must register the id every earlier relay of that shard used, so that its
        `init_transactions()` fences a zombie still running somewhere and aborts its open
        transaction before the checkpoint is read back. So the id derives from the source id and
        the shard, is never random (a new id fences nobody: two relays would publish the shard
        side by side) and never shared with another source or shard (relays of different shards
        would fence each other in turn).
        """
        publisher = TransactionalPublisher(
            kafka,
            transactional_id(source_id, shard),
            timeout=kafka_timeout,
            stopping=stopping,
            signer=signer,
            waiting=waiting,
        )
        return cls(
            capture_for(engine, shard, mode=capture, source_id=source_id, cleanup=cleanup)
            if isinstance(capture, str)
            else capture,
            publisher,
            Checkpoints(kafka, checkpoint_topic, source_id, shard),
            DeadLetters(engine),
            batch_size=batch_size,
            tracer=tracer,
            latency=latency,
            heartbeat_interval=heartbeat_interval,
        )

    @property
    def stats(self) -> RelayStats:
        """What this relay has done so far: a copy, because only the relay counts."""
        return replace(self._stats)

    @property
    def caught_up(self) -> bool:
        """Whether the last step reached the end of what had committed (see `Batch.caught_up`)."""
        return self._caught_up

    def start(self) -> None:
        """Fence older instances, then resume from the committed checkpoint (in that order)."""
        self._checkpoints.ensure_topic()
        self._publisher.start()
        self._stats.position = self._checkpointed = self._checkpoints.read()
        self._checkpointed_at = self._clock()
        log.info("relay of %s resuming after %s", self._checkpoints.key, self._stats.position)

    def step(self) -> int:
        """Publish the next batch, if any, in one transaction; return how many events it held.

        When Kafka refuses a record for good, the broker may report it for every record that
        shared its request, so the culprit is not known yet: the records of that batch are then
        published one per transaction, and only one that fails alone becomes a dead letter.

        An empty batch whose position moved past the checkpoint (WAL capture caught up with WAL
        other tables wrote) is checkpointed in an empty Kafka transaction once `heartbeat_interval`
        has passed since the last checkpoint (a heartbeat), and the source told as after a batch:
        it confirms its slot, which lets that WAL go.
        """
        while True:
            limit = 1 if self._isolating else self._batch_size
            batch = self._capture.fetch(self._stats.position, limit)
            publishable = self._publishable(batch.rows)
            envelopes = [row.envelope for row in publishable]
            try:
                if envelopes:
                    self._publish(envelopes, batch.position)
            except UnpublishableRecordError as exc:
                if len(envelopes) > 1:
                    self._isolating = len(envelopes)
                    log.warning("%s; finding the refused record one transaction at a time", exc)
                else:
                    self._dead_letter(publishable[exc.index], exc.reason)
                continue
            except PublishAbortedError:
                self._stats.aborted += 1  # the service retries it from the position this relay holds
                raise
            break
        self._isolating = max(0, self._isolating - len(envelopes))
        self._stats.position = batch.position
        self._caught_up = batch.caught_up
        if envelopes:
            self._committed(len(envelopes), batch.position)
        else:
            self._heartbeat(batch.position)
        return len(batch.rows)

    def _publishable(self, rows: Sequence[CapturedRow]) -> list[CapturedRow]:
        """`rows` but those that cannot be published as they are, which become dead letters now:
        before the rest's checkpoint, so a relay that dies in between finds them again."""
        for row in rows:
            if row.refused is not None:
                self._dead_letter(row, row.refused)
        return [row for row in rows if row.refused is None]

    def _dead_letter(self, row: CapturedRow, reason: str) -> None:
        self._dead_letters.move(row, reason)
        self._capture.dead_lettered(row.id)
        self._stats.dead_letters += 1

    def _heartbeat(self, position: Position) -> None:
        """Checkpoint `position`, which no event came with, if a heartbeat is due (see `step`)."""
        if (
            self._heartbeat_interval > 0
            and position != self._checkpointed
            and self._clock() - self._checkpointed_at >= self._heartbeat_interval
        ):
            self._publisher.publish([], self._checkpoints.record(position))
            self._stats.heartbeats += 1
            self._committed(0, position)

    def _committed(self, events: int, position: Position) -> None:
        """Count a committed Kafka transaction, then tell the capture source (never before)."""
        self._checkpointed, self._checkpointed_at = position, self._clock()
        if events:
            self._stats.published += events
            self._stats.transactions += 1
        log.debug("committed Kafka transaction with %d events, checkpoint after %s", events, position)
        self._capture.published(position)

    def _publish(self, envelopes: list[Envelope], position: Position) -> None:
        """One Kafka transaction, in a span linked to the spans the events were written in; once
        committed, each event's time since it was written counts in the latency histogram."""
        links = [Link(context) for context in span_contexts(e.extra_headers for e in envelopes)]
        attributes = messaging_attributes("publish", "send", len(envelopes), {e.topic for e in envelopes})
        if len(envelopes) == 1 and envelopes[0].key is not None:
            attributes[MESSAGING_KAFKA_KEY] = envelopes[0].key.decode(errors="replace")
        with self._tracer.start_as_current_span(
            names.PUBLISH_SPAN, kind=SpanKind.PRODUCER, links=links, attributes=attributes
        ):
            started = time.monotonic()
            self._publisher.publish(envelopes, self._checkpoints.record(position))
            self._stats.commit_seconds += time.monotonic() - started
        if self._latency is not None:
            self._latency.observe_ages(e.created_at for e in envelopes if e.created_at is not None)

    def backlog(self) -> Backlog:
        return self._capture.backlog(self._stats.position)

    def delete_published(self, limit: int, created_before: datetime | None) -> int:
        """Delete up to `limit` outbox rows this relay has published (and committed to Kafka)."""
        deleted = self._capture.delete_published(self._stats.position, limit, created_before)
        self._stats.deleted += deleted
        return deleted

    def close(self) -> None:
        self._capture.close()
        self._publisher.close()

    def wakeup_fd(self) -> int | None:
        return self._capture.wakeup_fd()

    def run(
        self, should_stop: Callable[[], bool], *, drain: bool = False, poll_interval: float = 0.5
    ) -> RelayStats:
        """Run this (started) relay alone until `should_stop()`, or with `drain` until caught up:
        the service's loop over this one shard, waiting `poll_interval` seconds when idle."""
        RelayService(SoleLease(), lambda _: self, poll_interval=poll_interval).run(should_stop, drain=drain)
        return self.stats


def relay_from_settings(
    settings: RelaySettings, stopping: Callable[[], bool] = lambda: False
) -> RelayService:
    """Compose the relay service from its settings: the one place that picks the parts.

    `stopping` is the process's stop request (SIGTERM): Kafka calls that would retry stop waiting.
    """
    latency = Histogram(*names.COMMIT_TO_PUBLISHED)  # filled by each shard's relay, shown by the service
    health = Health(services=[settings.kafka.client_log])
    # No pool_pre_ping: a connection lost to a database restart fails one fetch, the pool drops
    # it, and the retry gets a new one — cheaper than a ping before every fetch.
    engine = urls.engine(settings.database_url.get_secret_value())
    expect_shards(engine, settings.shards)  # SQLite takes no lease: shards would go unnoticed
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
        lambda shard: _started_relay(settings, engine, shard, stopping, latency=latency, health=health),
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
        start_timeout=settings.start_timeout or None,
        histograms=(latency,),
        health=health,
        kafka_check=BrokerCheck(settings.kafka),
    )


def _started_relay(
    settings: RelaySettings,
    engine: Engine,
    shard: Shard,
    stopping: Callable[[], bool],
    *,
    latency: Histogram,
    health: Health,
) -> Relay:
    relay = Relay.for_shard(
        engine,
        settings.kafka,
        settings.source_id,
        settings.checkpoint_topic,
        shard,
        batch_size=settings.batch_size,
        kafka_timeout=settings.kafka_timeout,
        stopping=stopping,
        signer=settings.signer,
        latency=latency,
        waiting=lambda why: health.beat(ok=False, why=why),
        capture=settings.capture,
        # Polling sources hold nothing on the server for an idle relay: no heartbeat to pay for.
        heartbeat_interval=settings.heartbeat_interval if settings.capture == "wal" else 0.0,
        cleanup=settings.cleanup,
    )
    try:
        relay.start()
    except RelayError:
        relay.close()
        raise
    return relay


def transactional_id(source_id: str, shard: Shard = ONLY) -> str:
    """The Kafka transactional id of a shard's relay: derived, never random, never shared — the
    fencing of a zombie depends on it (see `Relay.for_shard`)."""
    return f"outboxkit-relay.{source_id}{shard.suffix}"
