"""The sink's Kafka boundary: a read_committed consumer that starts where the warehouse says.

* `isolation.level` is always `read_committed`: a read_uncommitted sink would apply events of
  relay transactions that were later aborted. Any other value is refused at start-up.
* The warehouse's offsets position the consumer. On every assignment it seeks to the offsets
  stored in the warehouse with the data, and remembers them: the writer moves each one only from
  that value (compare-and-set), so a partition written meanwhile by another instance is re-read.
* Those offsets are also committed to the consumer group, asynchronously after each warehouse
  commit, for monitoring only — so lag exporters, `kafka-consumer-groups.sh` and KEDA's Kafka
  scaler see the sink's progress. Nothing ever reads them back: a commit lost, late or made by a
  sink that has lost the partition moves nothing. A partition read to its end commits its end,
  past the transaction marker that follows the last record, so a drained sink shows lag 0.
* A partition can be stopped (an incompatible record): it is paused where it is and its offset
  stays, until the sink restarts; nothing of it is returned any more.
* A stored offset Kafka no longer holds (deleted by retention before the sink read it, or a
  topic re-created) is never jumped over: it is reported as a gap, and the partition stops there.
* Kafka's messages end here: `poll` returns `Consumed` records, so nothing past this module (and
  the tools' `partitions`) depends on the client library.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from runtime.backoff import Backoff
from runtime.kafka import KafkaSettings
from sink import names
from sink.errors import SinkConfigError, SinkError, WarehouseError
from sink.records import Consumed, Source, Where

log = logging.getLogger(names.LOGGER)
OffsetLoader = Callable[[Iterable[str]], dict[Where, int]]
SLICE = 0.02  # seconds: how long a poll waits for more once records are flowing
ASSIGN_RETRIES = 15  # about a minute of a warehouse away before the sink gives up and exits


class WarehouseConsumer:
    """Consumes outboxkit topics for one consumer group. Not thread-safe."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        topics: Sequence[str],
        load_offsets: OffsetLoader,
        *,
        isolation_level: str = "read_committed",
        instance_id: str | None = None,
    ) -> None:
        if isolation_level != "read_committed":
            raise SinkConfigError(
                f"isolation_level={isolation_level!r} is refused: only 'read_committed' keeps events of "
                "aborted relay transactions out of the warehouse"
            )
        strategy = kafka.client_config().get("partition.assignment.strategy", "")
        if "cooperative" in str(strategy):
            raise SinkConfigError(
                f"partition.assignment.strategy={strategy!r} is refused: the sink re-reads the warehouse "
                "offsets for whole assignments (eager rebalancing); use range or roundrobin"
            )
        self._topics = list(topics)
        self._load_offsets = load_offsets
        self._ends: dict[Where, int] = {}  # partitions read to their end: the offset Kafka reported
        self._unsettled: dict[Where, list[int]] = {}  # offsets returned by `poll`, not yet stored past
        self._client_log = kafka.client_log
        self._positions: dict[Where, int | None] = {}  # next offset as stored; None: no row yet
        self._stopped: set[Where] = set()
        self._gaps: dict[Where, tuple[int, str]] = {}  # found, not yet recorded: offset, reason
        self._consumer = Consumer(
            kafka.client_config(
                {
                    "group.id": group_id,
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    # A stored offset Kafka no longer holds is a gap to report, never a jump.
                    "auto.offset.reset": "error",
                    "enable.partition.eof": True,
                    "on_commit": _committed,
                    # Static membership: a restart under the same id gets its partitions back with
                    # no rebalance of the others (within session.timeout.ms).
                    **({"group.instance.id": instance_id} if instance_id else {}),
                }
            )
        )
        self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def poll(self, max_records: int, timeout: float) -> list[Consumed]:
        """Up to `max_records` records of assigned, running partitions, in offset order per partition.

        Waits up to `timeout` for the first records, then takes what keeps arriving in short
        slices and returns as soon as a slice brings nothing: a batch never waits out the timeout
        for records that are not coming (a tail, or a quiet topic), so latency stays low.
        """
        deadline = time.monotonic() + timeout
        consumed: list[Message] = []
        while len(consumed) < max_records:
            left = deadline - time.monotonic()
            more = self._consumer.consume(max_records - len(consumed), max(0.0, min(SLICE, left)))
            consumed += more
            if (consumed and not more) or left <= 0:
                break
        if consumed:
            self._client_log.reached()
        return self._accept(consumed)

    def _accept(self, consumed: list[Message]) -> list[Consumed]:
        """The records to return of what was consumed; each error or end reported among them noted."""
        records: list[Consumed] = []
        for message in consumed:
            error = message.error()
            if error is not None:
                self._reported((message.topic() or "", message.partition() or 0), error, message.offset())
            elif self._counted(record := consumed_record(message)):
                records.append(record)
        return records

    def _counted(self, record: Consumed) -> bool:
        """Count a record as unsettled; True if it is to be returned (its partition ours and running).
        Reads the record's own copy of its coordinates: the client's getters build new objects per
        call, and this runs for every record."""
        source = record.source
        where = (source.topic, source.partition)
        if where not in self._positions:
            return False
        self._ends.pop(where, None)
        self._unsettled[where].append(source.offset)
        if where in self._stopped:  # waits behind the stop: counted, not returned
            self._consumer.pause([TopicPartition(*where)])
            return False
        return True

    def _reported(self, where: Where, error: KafkaError, offset: int | None) -> None:
        """What librdkafka reports instead of a record: an end, a gap, a fatal or a passing error."""
        if error.code() == KafkaError._PARTITION_EOF:
            self._reached_end(where, offset)
        elif error.code() == KafkaError._AUTO_OFFSET_RESET:
            if where in self._positions and where not in self._stopped:
                self._gaps[where] = (offset or 0, self._gap(where, offset or 0))
        elif error.fatal():
            raise SinkError(f"fatal Kafka consumer error: {error.str()}")
        else:
            log.warning("Kafka consumer error (librdkafka retries it): %s", error.str())

    def _reached_end(self, where: Where, offset: int | None) -> None:
        if where in self._positions:  # an end reported for a partition no longer ours: ignore
            log.debug("%s[%d] read to its end, offset %s", *where, offset)
            self._ends[where] = offset or 0
            if where in self._stopped:
                self._consumer.pause([TopicPartition(*where)])
            self._show([where])

    def _gap(self, where: Where, offset: int) -> str:
        """Why Kafka has no record at the stored offset, and what the operator can do."""
        low, high = self._consumer.get_watermark_offsets(TopicPartition(*where), timeout=10)
        topic, partition = where
        if offset < low:
            return (
                f"offsets {offset}-{low - 1} of {topic}[{partition}] were deleted by Kafka (retention) "
                "before this sink read them: they cannot reach the warehouse from Kafka. Re-publish "
                "them from the source if you can, then accept the gap with `outboxkit sink skip "
                f"--topic {topic} --partition {partition} --to-offset {low}` and restart the sink"
            )
        return (
            f"the warehouse's offset {offset} is past the end of {topic}[{partition}] ({high}): was the "
            "topic deleted and re-created? If so, `outboxkit sink replay --topic "
            f"{topic} --partition {partition} --from-offset 0` and restart the sink"
        )

    def positions(self) -> Mapping[Where, int | None]:
        """The next offset per assigned partition as the warehouse stores it (None: no row yet):
        what a batch's offsets must move from."""
        return self._positions

    def running(self, records: Iterable[Consumed]) -> list[Consumed]:
        """`records` without those of stopped partitions: nothing of a stopped one is settled. With
        none stopped (the usual case) no record is looked at: this runs per batch, over every record."""
        if not self._stopped:
            return list(records)
        return [record for record in records if record.source.where not in self._stopped]

    def halted(self) -> int:
        """How many assigned partitions are stopped (they wait for an operator)."""
        return len(self._stopped)

    def next_gap(self) -> tuple[Where, int, str] | None:
        """A partition whose stored offset Kafka no longer holds, with that offset and why; each
        one is handed out once (the caller records it and stops the partition)."""
        if not self._gaps:
            return None
        where, (offset, reason) = self._gaps.popitem()
        return where, offset, reason

    def advanced(self, moves: Mapping[Where, tuple[int | None, int]]) -> None:
        """The warehouse committed `moves`: remember the new stored offsets."""
        for where, (_, next_offset) in moves.items():
            if where in self._positions:
                self._positions[where] = next_offset
                waiting = self._unsettled[where]
                self._unsettled[where] = [offset for offset in waiting if offset >= next_offset]
        self._show(moves)

    def _show(self, wheres: Iterable[Where]) -> None:
        """Commit the stored offsets of `wheres` to the group, for monitoring only (see the module):
        a partition read to its end with nothing waiting shows its end (even with no stored row:
        then only markers or aborted records were there)."""
        shown = []
        for where in wheres:
            if where not in self._positions:
                continue  # no longer ours
            settled = not self._unsettled.get(where) and where not in self._stopped
            end = self._ends.get(where, -1) if settled else -1
            stored = self._positions[where]
            offset = max(-1 if stored is None else stored, end)
            if offset >= 0:
                shown.append(TopicPartition(*where, offset))
        if shown:
            try:
                self._consumer.commit(offsets=shown, asynchronous=True)
            except KafkaException as exc:  # monitoring only: never worth stopping for
                log.debug("offsets not shown to the group: %s", exc)

    def stop(self, where: Where) -> None:
        """Halt one partition at its stored offset (an incompatible record sits there).

        Its fetching is paused at its end or at its next record, whichever Kafka reports first:
        so `lag` knows whether only transaction markers follow the records that wait.
        """
        self._stopped.add(where)
        if where in self._ends:
            self._consumer.pause([TopicPartition(*where)])

    def reseek(self) -> None:
        """Re-read every assigned partition from the warehouse's offsets (another writer moved them)."""
        stored = self._stored_offsets()
        for where in list(self._positions):
            self._positions[where] = stored.get(where)
            self._restart(where)
            try:
                self._consumer.seek(TopicPartition(*where, stored.get(where, OFFSET_BEGINNING)))
            except KafkaException as exc:  # not yet fetching: the next assignment seeks anyway
                log.info("seek %s deferred: %s", where, exc)

    def caught_up(self) -> bool:
        """True once every running assigned partition was read to its last committed record."""
        running = [where for where in self._positions if where not in self._stopped]
        return bool(self._positions) and all(where in self._ends for where in running)

    def lag(self) -> int:
        """Records not yet applied, summed over the assigned partitions (from the last fetch).

        A partition read to its end counts exactly the records returned but not stored past (a
        stopped partition's waiting ones): the offsets after them are only transaction markers,
        which a read_committed consumer steps over and which are nothing to apply. Any other
        partition counts the offsets up to its end, markers included: it is still being read.
        """
        total = 0
        for where, stored in list(self._positions.items()):
            _, high = self._consumer.get_watermark_offsets(TopicPartition(*where), cached=True)
            if where in self._ends and high <= self._ends[where]:
                total += len(self._unsettled[where])
            elif high >= 0:
                total += max(0, high - (stored or 0))
        return total

    def close(self) -> None:
        self._consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._client_log.reached()  # the group coordinator answered
        stored = self._stored_offsets()
        for tp in partitions:
            where = (tp.topic, tp.partition)
            self._positions[where] = stored.get(where)
            self._restart(where)
            tp.offset = stored.get(where, OFFSET_BEGINNING)
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        consumer.assign(partitions)

    def _restart(self, where: Where) -> None:
        """The partition is read again from its stored offset: nothing read of it before counts."""
        self._ends.pop(where, None)
        self._unsettled[where] = []

    def _stored_offsets(self) -> dict[Where, int]:
        """The warehouse's offsets, waited for: partitions must not start anywhere else."""
        backoff = Backoff(maximum=5.0)
        while True:
            try:
                return self._load_offsets(self._topics)
            except WarehouseError as exc:
                if backoff.failures >= ASSIGN_RETRIES:
                    raise
                log.warning("%s; assignment waits %.1fs for the warehouse", exc, backoff.wait())

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            where = (tp.topic, tp.partition)
            self._ends.pop(where, None)
            self._unsettled.pop(where, None)
            self._positions.pop(where, None)
            self._stopped.discard(where)
        consumer.unassign()


def _committed(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """A commit to the group failed (e.g. the partition moved meanwhile): the next one shows it."""
    if error is not None:
        log.debug("offsets not shown to the group: %s", error.str())


def consumed_record(message: Message) -> Consumed:
    """Our copy of a record the client returned without error: the one place a `Message` becomes
    sink data (a record's partition and offset are always set; only errors lack them)."""
    headers = message.headers() or ()
    return Consumed(
        Source(
            message.topic() or "", message.partition() or 0, message.offset() or 0, message.timestamp()[1]
        ),
        message.key(),
        message.value(),
        list(headers.items()) if isinstance(headers, dict) else headers,
    )
