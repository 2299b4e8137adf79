"""The sink loop: poll -> assemble a batch -> write it and its offsets in one transaction -> repeat.

It owns no guarantee itself (the writer's transaction and offset compare-and-set do); it keeps
the process going — retrying a warehouse that went away with the same in-memory batch (nothing
partial is ever committed), re-reading partitions another instance wrote, halting partitions
that hit an incompatible record — and shows what happens: metrics, probes, one span per batch
linked to the spans the events were written in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial
from ipaddress import IPv4Address, IPv6Address

from confluent_kafka import Message
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Tracer

from outbox.backoff import Backoff
from outbox.observe import EVERY_INTERFACE, Health, Histogram, Metrics, serve
from outbox.signing import Verifier
from outbox.tracing import (
    MESSAGING_CONSUMER_GROUP,
    MESSAGING_KAFKA_KEY,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_PARTITION,
    Attributes,
    messaging_attributes,
    span_contexts,
)
from sink import names
from sink.batch import Policy, Refusals, assemble
from sink.consumer import WarehouseConsumer
from sink.errors import PartitionMovedError, RecordsRefusedError, WarehouseError
from sink.mapping import TableMapping
from sink.records import DeadLetter, Raw, Source, headers_of, source_of
from sink.writer import Batch, Outcome, SinkWriter

log = logging.getLogger(names.LOGGER)
SAME_BATCH_FAILURES = 3  # then, if the warehouse answers a ping, the batch itself is the problem


@dataclass
class SinkStats:
    """Totals since start; `applied` + `skipped` + `dead_letters` = records consumed and settled."""

    received: int = 0
    applied: int = 0
    skipped: int = 0
    dead_letters: int = 0
    batches: int = 0
    moved: int = 0  # batches refused because another instance had moved a partition's offset
    retries: int = 0  # warehouse failures retried
    untrusted: int = 0  # records refused as possibly not the relay's (dead letters and stops alike)


class Sink:
    """Moves events from Kafka into one warehouse for one consumer group."""

    def __init__(
        self,
        consumer: WarehouseConsumer,
        writer: SinkWriter,
        group_id: str,
        mappings: Mapping[str, Sequence[TableMapping]],
        *,
        batch_size: int = 5000,
        poll_timeout: float = 0.5,
        max_record_bytes: int = 1 << 20,
        poison_policy: Policy = "dlq",
        backoff: Backoff | None = None,
        http_port: int | None = None,
        http_host: IPv4Address | IPv6Address = EVERY_INTERFACE,
        tracer: Tracer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self._consumer = consumer
        self._writer = writer
        self._group_id = group_id
        self._mappings = dict(mappings)
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._max_bytes = max_record_bytes
        self._policy = poison_policy
        self._backoff = backoff or Backoff()
        self._http_port = http_port
        self._verifier = verifier
        self._http_host = http_host
        self._tracer = tracer or trace.get_tracer(names.TRACER)
        self.stats = SinkStats()
        self._lag = 0
        self.health = Health()
        self.latency = Histogram(*names.COMMIT_TO_APPLIED)
        self.metrics = self._metrics()

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> SinkStats:
        """Loop until `should_stop()`; with `drain`, also stop once all partitions are caught up."""
        server = (
            serve(self._http_port, self.metrics, self.health, self._http_host)
            if self._http_port is not None
            else None
        )
        try:
            while not should_stop():
                messages = self._consumer.poll(self._batch_size, self._poll_timeout)
                self._stop_at_gaps(should_stop)
                self._settle(messages, should_stop)
                self._lag = self._consumer.lag()  # here: the consumer is not for the metrics thread
                if drain and not messages and self._consumer.caught_up():
                    break
        finally:
            self._consumer.close()
            self._writer.close()
            if server is not None:
                server.shutdown()
        return self.stats

    def _settle(
        self, messages: list[Message], should_stop: Callable[[], bool], refused: Refusals | None = None
    ) -> bool:
        """Write `messages` as one batch. False if a partition moved: then the partitions were
        re-read from the warehouse, and nothing more of these messages may be settled."""
        messages = [m for m in messages if (m.topic(), m.partition()) not in self._consumer.stopped]
        if not messages:
            self.health.beat(ok=not self._consumer.stopped)
            return True
        refused = refused or {}
        batch, stopping = assemble(
            messages,
            self._mappings,
            self._writer.schemas,
            self._consumer.positions,
            max_bytes=self._max_bytes,
            policy=self._policy,
            refused=refused,
            verifier=self._verifier,
        )
        with self._tracer.start_as_current_span(
            names.BATCH_SPAN,
            kind=SpanKind.CONSUMER,
            links=[Link(context) for context in span_contexts(headers_of(m) for m in messages)],
            attributes=self._attributes(messages, batch),
        ):
            try:
                outcome = self._write(batch, should_stop)
            except RecordsRefusedError as exc:  # settle them as dead letters (or stops), per policy
                return self._settle(messages, should_stop, {**refused, **exc.reasons})
            except WarehouseError as exc:
                if not exc.data:
                    raise
                return self._isolate(messages, exc, should_stop, refused)
        if outcome is None:
            return False
        self._consumer.advanced(batch.moves)
        for where in stopping:
            log.error("%s[%d] stopped: %s", *where, _reason(batch, where))
            self._consumer.stop(where)
        self._count(len(messages), outcome)
        self.latency.observe_ages(
            row.created_at for rows in batch.rows.values() for row in rows if row.created_at is not None
        )
        self.health.beat(ok=not self._consumer.stopped)  # a halted partition needs an operator
        return True

    def _attributes(self, messages: list[Message], batch: Batch) -> Attributes:
        """The batch span's messaging attributes; a partition, offset and key only where the batch
        has one alone (the partitions are the batch's offset moves: no pass over the records)."""
        attributes = messaging_attributes(
            "process", "process", len(messages), {topic for topic, _ in batch.moves}
        )
        attributes[MESSAGING_CONSUMER_GROUP] = self._group_id
        if len(batch.moves) == 1:
            [(_, partition)] = batch.moves
            attributes[MESSAGING_PARTITION] = str(partition)
        if len(messages) == 1:
            source = source_of(messages[0])
            attributes[MESSAGING_KAFKA_OFFSET] = source.offset
            if (key := messages[0].key()) is not None:
                attributes[MESSAGING_KAFKA_KEY] = key.decode(errors="replace")
        return attributes

    def _stop_at_gaps(self, should_stop: Callable[[], bool]) -> None:
        """Partitions whose stored offset Kafka no longer holds stop there, recorded with the reason
        (as a stop without a record), so status, metrics and /readyz show them: nothing is skipped."""
        while self._consumer.gaps:
            where, (offset, reason) = self._consumer.gaps.popitem()
            source = Source(*where, offset=offset, timestamp_ms=int(time.time() * 1000))
            letter = DeadLetter(source, Raw(key=None, value=None, headers=()), reason, stop=True)
            if self._write(Batch(dead_letters=[letter]), should_stop) is None:
                continue  # the partition moved to another instance: it meets the gap there
            log.error("%s[%d] stopped at offset %d: %s", *where, offset, reason)
            self._consumer.stop(where)
            self.health.beat(ok=False)

    def _isolate(
        self,
        messages: list[Message],
        error: WarehouseError,
        should_stop: Callable[[], bool],
        refused: Refusals,
    ) -> bool:
        """The warehouse refused a value: retrying cannot help, so halve the batch until the one
        record is found, and settle it as a dead letter (or a stop, per policy) with the reason.
        A half whose partition moved ends it: what follows is re-read from the warehouse."""
        if len(messages) > 1:
            half = len(messages) // 2
            return self._settle(messages[:half], should_stop, refused) and self._settle(
                messages[half:], should_stop, refused
            )
        source = source_of(messages[0])
        where = (source.topic, source.partition, source.offset)
        reason = f"the warehouse refused it: {str(error).splitlines()[0]}"
        if where not in refused:
            return self._settle(messages, should_stop, {**refused, where: reason})
        # Even its dead letter is refused: nothing can be written for it, so its partition halts.
        log.error(
            "%s[%d] stopped at offset %d: %s (its dead letter too)", *source.where, source.offset, reason
        )
        self._consumer.stop(source.where)
        self.health.beat(ok=False)
        return True

    def _write(self, batch: Batch, should_stop: Callable[[], bool]) -> Outcome | None:
        """Write `batch`, retrying an unreachable warehouse with backoff; None if the partitions
        moved. A refused value is raised at once (`WarehouseError.data`): a retry cannot help; so
        is a failure that repeats while the warehouse answers (it is the batch, not an outage)."""
        failures = 0
        while True:
            try:
                outcome = self._writer.write(self._group_id, batch)
            except PartitionMovedError as exc:
                log.warning("%s", exc)
                self.stats.moved += 1
                self._writer.refresh()
                self._consumer.reseek()
                return None
            except WarehouseError as exc:
                self.health.beat(ok=False)
                failures += 1
                if exc.data or should_stop():
                    raise
                if failures >= SAME_BATCH_FAILURES and self._writer.ping():
                    raise WarehouseError(str(exc), data=True) from exc
                self.stats.retries += 1
                log.warning("%s; the same batch is retried in %.1fs", exc, self._backoff.wait())
                continue
            self._backoff.reset()
            return outcome

    def _count(self, received: int, outcome: Outcome) -> None:
        for letter in outcome.dead_letters:
            if not letter.stop:
                log.warning(
                    "dead letter %s[%d]@%d: %s", *letter.source.where, letter.source.offset, letter.reason
                )
        self.stats.received += received
        self.stats.applied += outcome.applied
        self.stats.skipped += outcome.skipped
        self.stats.dead_letters += sum(1 for letter in outcome.dead_letters if not letter.stop)
        self.stats.untrusted += sum(1 for letter in outcome.dead_letters if letter.untrusted)
        self.stats.batches += 1

    def _metrics(self) -> Metrics:
        """The counters read from `stats` and the gauges at scrape time (see `sink.names`), and
        the commit -> applied histogram `_settle` fills."""
        metrics = Metrics()
        for stat in fields(SinkStats):
            metrics.counter(*names.COUNTERS[stat.name], partial(self._stat, stat.name))
        metrics.gauge(*names.LAG_RECORDS, lambda: float(self._lag))
        metrics.gauge(*names.STOPPED_PARTITIONS, lambda: float(len(self._consumer.stopped)))
        metrics.histogram(self.latency)
        return metrics

    def _stat(self, name: str) -> float:
        return float(getattr(self.stats, name))


def _reason(batch: Batch, where: tuple[str, int]) -> str:
    return next(
        letter.reason for letter in batch.dead_letters if letter.stop and letter.source.where == where
    )
