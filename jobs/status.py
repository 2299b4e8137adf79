"""`outboxkit jobs status`: how far the dispatchers are behind the jobs topic, what the broker holds,
and what the workers' inbox absorbed.

Read from the sources of truth — the group's committed offsets and the partitions' ends from Kafka,
the queues and their dead-letter queues from the broker, the inbox table from the workers'
database (`OUTBOXKIT_JOBS_INBOX_URL`, when set) — so it answers when no dispatcher runs, which is
when it is needed most.
A partition's lag counts the records not yet delivered (plus, at most, the marker of the last relay
transaction when the dispatcher has not seen its end yet).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dramatiq
from confluent_kafka import Consumer, TopicPartition

from jobs.dead_letters import dead_letter_queues
from jobs.delivery import DramatiqDelivery, broker_from_url
from jobs.errors import JobsError
from jobs.inbox import Inbox, InboxCounts
from jobs.settings import JobsSettings
from runtime import urls

KAFKA_TIMEOUT = 10.0  # seconds per metadata or offsets request


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # the group's next offset; None: the group has committed nothing here
    end: int  # Kafka's high watermark
    lag: int


@dataclass(frozen=True)
class JobsStatus:
    group_id: str
    topic: str
    partitions: list[PartitionLag]
    queues: dict[str, int]  # queue -> messages waiting in it (due or delayed) or being run
    dead_letters: dict[str, int]  # queue -> messages Dramatiq gave up on (`outboxkit jobs replay`)
    broker: str | None  # why the broker's queues are not shown; None: they are
    inbox: InboxCounts | None  # the workers' inbox; None without OUTBOXKIT_JOBS_INBOX_URL

    @property
    def lag(self) -> int:
        return sum(partition.lag for partition in self.partitions)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"lag": self.lag}, indent=2)

    def render(self) -> str:
        lines = [f"group {self.group_id} on {self.topic}: {self.lag} job(s) not yet dispatched"]
        for p in self.partitions:
            committed = "nothing yet" if p.committed is None else str(p.committed)
            lines.append(f"  {self.topic}[{p.partition}]: committed {committed}, end {p.end}, lag {p.lag}")
        lines += [
            f"  queue {queue}: {depth} message(s) waiting or running, {self.dead_letters[queue]} dead "
            f"letter(s){_replay_hint(queue) if self.dead_letters[queue] else ''}"
            for queue, depth in self.queues.items()
        ]
        if self.broker is not None:
            lines.append(f"  queues not shown: {self.broker}")
        if self.inbox is not None:
            lines.append(
                f"  inbox: {self.inbox.done} job(s) done, {self.inbox.duplicates} redelivery(ies) absorbed"
            )
        return "\n".join(lines)


def _replay_hint(queue: str) -> str:
    return f" (fix the cause, then `outboxkit jobs replay --queue {queue}`)"


def jobs_status(settings: JobsSettings, queues: Sequence[str] = ("default",)) -> JobsStatus:
    """The dispatchers' lag per partition, the depth and dead letters of each of `queues` in the
    broker, and the inbox's counts when the workers' database is configured."""
    delivery = DramatiqDelivery(broker_from_url(settings.broker_url.get_secret_value(), middleware=[]))
    try:
        away = delivery.unreachable()
        depths = {} if away else {queue: queue_depth(delivery.broker, queue) for queue in queues}
        dead = dead_letter_queues(delivery.broker)
        dead_letters = {queue: dead.count(queue) for queue in depths}
    finally:
        delivery.close()
    lag = group_lag(settings)
    return JobsStatus(
        settings.group_id, settings.topic, lag, depths, dead_letters, away, inbox_counts(settings)
    )


def inbox_counts(settings: JobsSettings) -> InboxCounts | None:
    """The workers' inbox, read from OUTBOXKIT_JOBS_INBOX_URL; None when it is not set."""
    if settings.inbox_url is None:
        return None
    engine = urls.engine(settings.inbox_url.get_secret_value())
    try:
        return Inbox(engine).counts()
    finally:
        engine.dispose()


def group_lag(settings: JobsSettings) -> list[PartitionLag]:
    """Committed offset against the high watermark, per partition of the jobs topic."""
    consumer = Consumer(
        settings.kafka.client_config({"group.id": settings.group_id, "enable.auto.commit": False})
    )
    try:
        topic = consumer.list_topics(settings.topic, timeout=KAFKA_TIMEOUT).topics[settings.topic]
        if topic.error is not None:
            raise JobsError(
                f"cannot read topic {settings.topic!r} ({topic.error.str()}): is OUTBOXKIT_JOBS_TOPIC the "
                "topic the relay publishes jobs to? It exists once the first job was published"
            )
        wanted = [TopicPartition(settings.topic, partition) for partition in sorted(topic.partitions)]
        return [_lag(consumer, tp) for tp in consumer.committed(wanted, timeout=KAFKA_TIMEOUT)]
    finally:
        consumer.close()


def _lag(consumer: Consumer, committed: TopicPartition) -> PartitionLag:
    low, high = consumer.get_watermark_offsets(committed, timeout=KAFKA_TIMEOUT)
    stored = committed.offset if committed.offset >= 0 else None  # negative: nothing committed
    return PartitionLag(committed.partition, stored, high, max(0, high - (low if stored is None else stored)))


def queue_depth(broker: dramatiq.Broker, queue: str) -> int:
    """Messages in `queue` and its delay queue, being run included (not its dead letters)."""
    counts: Any = getattr(broker, "get_queue_message_counts", None)
    if counts is not None:  # RabbitMQ: ready, delayed, dead-lettered
        ready, delayed, _ = counts(queue)
        return int(ready + delayed)
    return int(broker.do_qsize(queue))  # type: ignore[attr-defined]  # Redis's qsize command
