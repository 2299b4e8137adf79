"""The dispatcher: the jobs topic, read_committed, into a `JobDelivery`, offsets committed after it.

One round: poll a batch of records -> parse each into a `wire.Job` -> `delivery.deliver(batch)` ->
commit the batch's offsets to the consumer group, synchronously. The committed offsets are the
only progress a dispatcher keeps: a restarted one (or another member of the group) starts at them.

* **Nothing is lost.** Offsets move only past jobs the broker has accepted. A broker that refuses
  or does not answer (`BrokerUnavailableError`) gets the same batch again after a backoff; the
  process stays live and says not ready, commits nothing, and SIGTERM still ends it (exit 0).
* **Duplicates into the broker happen in three windows**, each one delivering again what the broker
  already took; the worker's inbox (`jobs.inbox`) absorbs them by message id:
  1. the dispatcher dies (SIGKILL, OOM, node loss) after `deliver` returned and before the offset
     commit landed: the restarted one re-reads the batch;
  2. the broker took a job but its reply was lost (a dropped connection, a timeout):
     `deliver` raises and the whole batch goes again;
  3. a rebalance hands a partition to another dispatcher before this one committed its batch
     (the commit then fails, or lands after the other one read the records).
* **A record that is not a job** (no outboxkit envelope, another event type, a payload that is not
  a `Job`) stops the dispatcher (`BadJobError`, exit 1) after the jobs before it were delivered
  and committed; the record stays in Kafka and the message names its topic, partition and offset.
* SIGTERM (`runtime.process.StopFlag`) ends the loop after the current batch is delivered and
  committed: exit 0, nothing delivered twice by the next start.

Kafka's client ends at `JobsConsumer`: the loop sees `Record`s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import dramatiq
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from jobs.dead_letters import dead_letter_queues
from jobs.delivery import DramatiqDelivery, JobDelivery, broker_from_url
from jobs.errors import BadJobError, BrokerUnavailableError, JobsError
from jobs.names import BATCHES, DEAD_LETTERS, DISPATCHED, FAILURES, LOGGER, READY
from runtime.backoff import Backoff
from runtime.kafka import BrokerCheck, KafkaSettings
from runtime.observe import Endpoints, Metrics, ServiceCheck
from runtime.startup import StartWindow
from wire.envelope import Envelope, KafkaHeaders
from wire.errors import EnvelopeError, JobFormatError
from wire.jobs import JOB_EVENT_TYPE, Job

if TYPE_CHECKING:
    from jobs.settings import JobsSettings

log = logging.getLogger(LOGGER)
REACH_SECONDS: Final = 5.0  # per attempt to reach Kafka at start-up; then its failure is said, and retried

Where = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the jobs topic, as the loop sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: KafkaHeaders

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass
class DispatchStats:
    dispatched: int = 0
    delivery_failures: int = 0
    batches: int = 0


class JobsConsumer:
    """The dispatcher's Kafka boundary: one consumer of the group, read_committed, offsets committed
    only by `commit` (never automatically), a new group starting at the topic's beginning."""

    def __init__(self, kafka: KafkaSettings, group_id: str, topic: str) -> None:
        self._client_log = kafka.client_log
        self._ends: dict[Where, int] = {}  # partitions read to their end since their last record
        self._assigned: set[Where] = set()
        self._committed: dict[Where, int] = {}  # what this consumer last committed per partition
        self._consumer = Consumer(
            kafka.client_config(
                {
                    "group.id": group_id,
                    "isolation.level": "read_committed",  # never a job of an aborted relay transaction
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": True,
                }
            )
        )
        self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        """Up to `max_records` records, in offset order per partition."""
        records: list[Record] = []
        for message in self._consumer.consume(max_records, timeout):
            error = message.error()
            if error is None:
                records.append(_record(message))
                self._ends.pop((records[-1].topic, records[-1].partition), None)
            else:
                self._reported(message, error)
        if records:
            self._client_log.reached()
        return records

    def _reported(self, message: Message, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            self._ends[(message.topic() or "", message.partition() or 0)] = message.offset() or 0
        elif error.fatal():
            raise JobsError(f"fatal Kafka consumer error: {error.str()}")
        else:
            log.warning("Kafka consumer error (librdkafka retries it): %s", error.str())

    def commit(self, records: Sequence[Record], *, ends: bool = True) -> None:
        """Commit the offsets past `records` (delivered) and, with `ends`, the ends of partitions read
        to their end — past the marker of the last relay transaction, so a drained group shows lag 0.
        Offsets already committed are not sent again.

        A commit Kafka refuses (a rebalance took the partition meanwhile, Kafka away) is logged and
        passes: the records are delivered again by whoever reads them next (a duplicate, never a
        loss), and a later commit of this consumer covers them."""
        offsets: dict[Where, int] = dict(self._ends) if ends else {}
        for record in records:
            where = (record.topic, record.partition)
            offsets[where] = max(offsets.get(where, 0), record.offset + 1)
        offsets = {where: at for where, at in offsets.items() if self._committed.get(where) != at}
        if offsets:
            self._commit(offsets)

    def _commit(self, offsets: dict[Where, int]) -> None:
        try:
            done = self._consumer.commit(
                offsets=[TopicPartition(*where, at) for where, at in offsets.items()], asynchronous=False
            )
        except KafkaException as exc:
            log.warning("offsets not committed (%s); those jobs may be delivered again", exc.args[0].str())
            return
        failed = {(tp.topic, tp.partition): tp.error for tp in done or () if tp.error is not None}
        for (topic, partition), error in failed.items():
            log.warning("offset of %s[%d] not committed (%s)", topic, partition, error)
        self._committed.update((where, at) for where, at in offsets.items() if where not in failed)

    def caught_up(self) -> bool:
        """Every assigned partition read to its end."""
        return bool(self._assigned) and self._assigned <= self._ends.keys()

    def close(self) -> None:
        self._consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._client_log.reached()
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        log.info("assigned %s", [(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            self._ends.pop((tp.topic, tp.partition), None)
            self._committed.pop((tp.topic, tp.partition), None)


def _record(message: Message) -> Record:
    headers = message.headers() or ()
    return Record(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        message.key(),
        message.value(),
        list(headers.items()) if isinstance(headers, dict) else headers,
    )


def parse(record: Record, group_id: str) -> Job:
    """The job a record carries, or `BadJobError` naming the record and what to do about it."""
    try:
        return _job(Envelope.from_kafka(record.topic, record.key, record.value, record.headers))
    except (EnvelopeError, JobFormatError) as exc:
        raise BadJobError(
            f"{record.where} is not a job ({exc}); the dispatcher stopped before it, every job before "
            f"it is delivered. The record stays in Kafka: stop what writes other events to {record.topic}, "
            f"then move the group past it (kafka-consumer-groups.sh --group {group_id} --topic "
            f"{record.topic}:{record.partition} --reset-offsets --to-offset {record.offset + 1} --execute) "
            "and start the dispatcher again"
        ) from exc


def _job(envelope: Envelope) -> Job:
    if envelope.event_type != JOB_EVENT_TYPE:
        raise JobFormatError(f"event type {envelope.event_type!r}, not {JOB_EVENT_TYPE!r}")
    return Job.from_payload(envelope.event_id, envelope.payload)


class Dispatcher:
    """Moves jobs from the jobs topic into the broker for one consumer group. Not thread-safe."""

    def __init__(
        self,
        consumer: JobsConsumer,
        delivery: JobDelivery,
        group_id: str,
        *,
        batch_size: int = 500,
        poll_timeout: float = 0.5,
        backoff: Backoff | None = None,
        endpoints: Endpoints | None = None,
        idle_checks: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._consumer, self._delivery, self._group_id = consumer, delivery, group_id
        self._batch_size, self._poll_timeout = batch_size, poll_timeout
        self._backoff = backoff or Backoff()
        self._endpoints = endpoints or Endpoints(None)
        self.health = self._endpoints.health
        # Asked when a poll brings nothing: with no batch to deliver, nothing else would notice.
        broker = ServiceCheck("the job broker", lambda: delivery.unreachable() is None)
        self.health.services.append(broker)
        self._idle_checks: list[Callable[[], None]] = [broker, *idle_checks]
        self.stats = DispatchStats()
        self._metrics(self._endpoints.metrics)

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> DispatchStats:
        """Loop until `should_stop()`; with `drain`, also once every partition is read to its end."""
        try:
            while not should_stop():
                records = self._consumer.poll(self._batch_size, self._poll_timeout)
                if records:
                    self._dispatch(records, should_stop)
                    continue
                self._consumer.commit(())  # the ends read since: a drained group shows lag 0
                if drain and self._consumer.caught_up():
                    break
                self._idle()
        finally:
            self._consumer.close()
            self._delivery.close()
            self._endpoints.close()
        return self.stats

    def _idle(self) -> None:
        for check in self._idle_checks:
            check()
        self.health.beat(ok=True)

    def _dispatch(self, records: Sequence[Record], should_stop: Callable[[], bool]) -> None:
        """Deliver and commit the batch; a bad record ends it there, then stops the dispatcher."""
        jobs: list[Job] = []
        for index, record in enumerate(records):
            try:
                jobs.append(parse(record, self._group_id))
            except BadJobError:
                if not self._delivered(jobs, should_stop):
                    return  # stopped while the broker was away: nothing before it committed yet
                self._consumer.commit(records[:index], ends=False)  # never the end past the bad record
                raise
        if self._delivered(jobs, should_stop):
            self._consumer.commit(records)
            self.stats.batches += 1

    def _delivered(self, jobs: Sequence[Job], should_stop: Callable[[], bool]) -> bool:
        """Deliver `jobs` until the broker takes them all (True), or until told to stop (False)."""
        while True:
            try:
                self._delivery.deliver(jobs)
            except BrokerUnavailableError as exc:
                self.stats.delivery_failures += 1
                self.health.beat(ok=False, why=str(exc).partition(";")[0])
                if should_stop():
                    return False
                log.warning("%s; retrying in %.1fs", exc, self._backoff.wait())
                continue
            self._backoff.reset()
            self.stats.dispatched += len(jobs)
            self.health.beat(ok=True)
            return True

    def _metrics(self, metrics: Metrics) -> None:
        metrics.counter(*DISPATCHED, lambda: float(self.stats.dispatched))
        metrics.counter(*FAILURES, lambda: float(self.stats.delivery_failures))
        metrics.counter(*BATCHES, lambda: float(self.stats.batches))
        metrics.gauge(*READY, lambda: float(self.health.ready))


def watch_dead_letters(metrics: Metrics, broker: dramatiq.Broker, queues: Sequence[str]) -> None:
    """The dead-letter gauge: a job stuck there needs an operator, so it must show on a dashboard."""
    dead = dead_letter_queues(broker)

    def waiting() -> float:
        return float(sum(dead.count(queue) for queue in {*queues, *broker.get_declared_queues()}))

    metrics.gauge(*DEAD_LETTERS, waiting)


def dispatcher_from_settings(settings: JobsSettings) -> Dispatcher:
    """The dispatcher, once Kafka answered (waited for up to `start_timeout`), its metrics and probes
    served from the start. The job broker is not waited for: the loop rides out its absence."""
    endpoints = Endpoints(settings.http_port, settings.http_host, services=(settings.kafka.client_log,))
    try:
        StartWindow(settings.start_timeout).retry(
            "reaching Kafka",
            lambda: AdminClient(settings.kafka.client_config()).list_topics(timeout=REACH_SECONDS),
            KafkaException,
            backoff=Backoff(maximum=settings.max_backoff),
            log=log,
            waiting=endpoints.health.turned,
        )
        # No middleware: this broker only sends; the workers' brokers run the actors and theirs.
        delivery = DramatiqDelivery(broker_from_url(settings.broker_url.get_secret_value(), middleware=[]))
    except BaseException:
        endpoints.close()
        raise
    watch_dead_letters(endpoints.metrics, delivery.broker, settings.queues)
    return Dispatcher(
        JobsConsumer(settings.kafka, settings.group_id, settings.topic),
        delivery,
        settings.group_id,
        batch_size=settings.batch_size,
        poll_timeout=settings.poll_timeout,
        backoff=Backoff(maximum=settings.max_backoff),
        endpoints=endpoints,
        idle_checks=(BrokerCheck(settings.kafka),),
    )
