"""Settling one poll's records: every record ends applied, skipped, dead-lettered or stopping its
partition, and its offset moves with it in the warehouse's transaction — or nothing happens.

* An unreachable warehouse is retried with the same in-memory batch (nothing partial is ever
  committed), with backoff, until it answers or the process stops.
* Records the warehouse refuses by name (`RecordsRefusedError`) are assembled again as dead
  letters (or stops, per policy), and the batch is written again.
* A value the warehouse refuses without naming the record (`WarehouseError.data`) is found by
  halving the batch until the one record is alone; it becomes a dead letter, and if even that is
  refused its partition stops.
* A partition another instance moved (`PartitionMovedError`) ends the settling: the catalogue and
  the offsets are re-read, and what was read is read again from there.

The running sink (`sink.service`) and the tests' driver settle through this one module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Tracer

from runtime.backoff import Backoff
from runtime.observe import Health, Histogram
from runtime.tracing import (
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
from sink.errors import PartitionMovedError, RecordsRefusedError, WarehouseError
from sink.mapping import TableMapping
from sink.records import Consumed, DeadLetter, Raw, Source, Where, headers_of
from sink.warehouse import Batch, Outcome, Warehouse
from wire import Verifier

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


class Partitions(Protocol):
    """What settling needs of the consumer (`WarehouseConsumer`; the tests' driver stands in)."""

    def positions(self) -> Mapping[Where, int | None]:
        """The stored offset per partition, which a batch's offsets move from."""
        ...

    def running(self, records: Sequence[Consumed]) -> list[Consumed]:
        """`records` without those of stopped partitions."""
        ...

    def halted(self) -> int:
        """How many partitions are stopped."""
        ...

    def advanced(self, moves: Mapping[Where, tuple[int | None, int]]) -> None:
        """The warehouse committed `moves`."""
        ...

    def stop(self, where: Where) -> None:
        """Halt a partition at its stored offset."""
        ...

    def reseek(self) -> None:
        """Read every partition again from the warehouse's offsets."""
        ...


HALTED = "a partition is stopped: `outboxkit sink status` says why and what to do"


class Settler:
    """Settles records into one warehouse for one consumer group. Not thread-safe."""

    def __init__(
        self,
        warehouse: Warehouse,
        partitions: Partitions,
        group_id: str,
        mappings: Mapping[str, Sequence[TableMapping]],
        *,
        max_bytes: int,
        policy: Policy,
        verifier: Verifier | None = None,
        backoff: Backoff | None = None,
        tracer: Tracer | None = None,
        latency: Histogram | None = None,
        health: Health | None = None,
    ) -> None:
        self._warehouse = warehouse
        self._partitions = partitions
        self._group_id = group_id
        self._mappings = mappings
        self._max_bytes = max_bytes
        self._policy = policy
        self._verifier = verifier
        self._backoff = backoff or Backoff()
        self._tracer = tracer or trace.get_tracer(names.TRACER)
        self._latency = latency  # commit -> applied, per table row written
        self.stats = SinkStats()
        self.health = health or Health()

    def settle(self, records: Sequence[Consumed], should_stop: Callable[[], bool]) -> list[Outcome]:
        """Settle `records` (those of running partitions); the outcomes of the transactions that
        did it: one, or several when a refused value was isolated. If a partition moved, the
        partitions were re-read and nothing more of `records` was settled."""
        outcomes: list[Outcome] = []
        self._settle(records, should_stop, {}, outcomes)
        return outcomes

    def stop_at(self, where: Where, offset: int, reason: str, should_stop: Callable[[], bool]) -> None:
        """Stop a partition at `offset` without a record there (Kafka no longer holds it), recorded
        with the reason as a stop, so status, metrics and /readyz show it: nothing is skipped."""
        source = Source(*where, offset=offset, timestamp_ms=int(time.time() * 1000))
        letter = DeadLetter(source, Raw(key=None, value=None, headers=()), reason, stop=True)
        if self._write(Batch(dead_letters=[letter]), should_stop) is None:
            return  # the partition moved to another instance: it meets the gap there
        log.error("%s[%d] stopped at offset %d: %s", *where, offset, reason)
        self._partitions.stop(where)
        self._beat()

    def _settle(
        self,
        records: Sequence[Consumed],
        should_stop: Callable[[], bool],
        refused: Refusals,
        outcomes: list[Outcome],
    ) -> bool:
        """Write `records` as one batch. False if a partition moved: then the partitions were
        re-read from the warehouse, and nothing more of these records may be settled."""
        records = self._partitions.running(records)
        if not records:
            self._beat()
            return True
        batch, stopping = assemble(
            records,
            self._mappings,
            self._warehouse.schemas,
            self._partitions.positions(),
            max_bytes=self._max_bytes,
            policy=self._policy,
            refused=refused,
            verifier=self._verifier,
        )
        with self._tracer.start_as_current_span(
            names.BATCH_SPAN,
            kind=SpanKind.CONSUMER,
            links=[Link(context) for context in span_contexts(headers_of(r) for r in records)],
            attributes=self._attributes(records, batch),
        ):
            try:
                outcome = self._write(batch, should_stop)
            except RecordsRefusedError as exc:  # settle them as dead letters (or stops), per policy
                return self._settle(records, should_stop, {**refused, **exc.reasons}, outcomes)
            except WarehouseError as exc:
                if not exc.data:
                    raise
                return self._isolate(records, exc, should_stop, refused, outcomes)
        if outcome is None:
            return False
        self._partitions.advanced(batch.moves)
        for where in stopping:
            log.error("%s[%d] stopped: %s", *where, _reason(batch, where))
            self._partitions.stop(where)
        self._count(len(records), outcome)
        self._observe(batch)
        outcomes.append(outcome)
        self._beat()
        return True

    def _attributes(self, records: Sequence[Consumed], batch: Batch) -> Attributes:
        """The batch span's messaging attributes; a partition, offset and key only where the batch
        has one alone (the partitions are the batch's offset moves: no pass over the records)."""
        topics = {topic for topic, _ in batch.moves}
        attributes = messaging_attributes("process", "process", len(records), topics)
        attributes[MESSAGING_CONSUMER_GROUP] = self._group_id
        if len(batch.moves) == 1:
            [(_, partition)] = batch.moves
            attributes[MESSAGING_PARTITION] = str(partition)
        if len(records) == 1:
            attributes[MESSAGING_KAFKA_OFFSET] = records[0].source.offset
            if (key := records[0].key) is not None:
                attributes[MESSAGING_KAFKA_KEY] = key.decode(errors="replace")
        return attributes

    def _isolate(
        self,
        records: Sequence[Consumed],
        error: WarehouseError,
        should_stop: Callable[[], bool],
        refused: Refusals,
        outcomes: list[Outcome],
    ) -> bool:
        """The warehouse refused a value: retrying cannot help, so halve the batch until the one
        record is found, and settle it as a dead letter (or a stop, per policy) with the reason.
        A half whose partition moved ends it: what follows is re-read from the warehouse."""
        if len(records) > 1:
            half = len(records) // 2
            return self._settle(records[:half], should_stop, refused, outcomes) and self._settle(
                records[half:], should_stop, refused, outcomes
            )
        source = records[0].source
        where = (source.topic, source.partition, source.offset)
        reason = f"the warehouse refused it: {str(error).splitlines()[0]}"
        if where not in refused:
            return self._settle(records, should_stop, {**refused, where: reason}, outcomes)
        # Even its dead letter is refused: nothing can be written for it, so its partition halts.
        log.error(
            "%s[%d] stopped at offset %d: %s (its dead letter too)", *source.where, source.offset, reason
        )
        self._partitions.stop(source.where)
        self._beat()
        return True

    def _beat(self) -> None:
        """A round done: ready unless a partition is halted (it needs an operator)."""
        self.health.beat(ok=not self._partitions.halted(), why=HALTED)

    def _write(self, batch: Batch, should_stop: Callable[[], bool]) -> Outcome | None:
        """Write `batch`, retrying an unreachable warehouse with backoff; None if the partitions
        moved. A refused value is raised at once (`WarehouseError.data`): a retry cannot help; so
        is a failure that repeats while the warehouse answers (it is the batch, not an outage)."""
        failures = 0
        while True:
            try:
                outcome = self._warehouse.write(self._group_id, batch)
            except PartitionMovedError as exc:
                log.warning("%s", exc)
                self.stats.moved += 1
                self._warehouse.refresh()
                self._partitions.reseek()
                return None
            except WarehouseError as exc:
                self.health.beat(ok=False, why=f"the warehouse fails: {str(exc).splitlines()[0]}")
                failures += 1
                if exc.data or should_stop():
                    raise
                if failures >= SAME_BATCH_FAILURES and self._warehouse.ping():
                    raise WarehouseError(str(exc), data=True) from exc
                self.stats.retries += 1
                log.warning("%s; the same batch is retried in %.1fs", exc, self._backoff.wait())
                continue
            self._backoff.reset()
            return outcome

    def _observe(self, batch: Batch) -> None:
        """Each table row written: its time from the outbox write to this commit."""
        if self._latency is not None:
            self._latency.observe_ages(
                row.created_at for rows in batch.rows.values() for row in rows if row.created_at is not None
            )

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


def _reason(batch: Batch, where: Where) -> str:
    return next(
        letter.reason for letter in batch.dead_letters if letter.stop and letter.source.where == where
    )
