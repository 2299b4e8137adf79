"""Kafka for the benchmarks: fresh topics, what a read_committed consumer sees, facts about the broker.

Every measurement writes to a topic of its own, so a count taken afterwards covers that
measurement and nothing else; the topics are deleted at the end of the run, as a 200,000-event
backlog leaves about 100 MB per topic on the broker's disk.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from importlib.metadata import version as metadata_version

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.report import BenchmarkError
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings
from wire.headers import HEADER_EVENT_ID

PARTITIONS = 3
log = logging.getLogger("outboxkit.bench")


class Topics:
    """Names and creates the run's topics, and remembers them to delete them at the end."""

    def __init__(self, kafka: KafkaSettings, prefix: str) -> None:
        self.kafka = kafka
        self._prefix = f"{prefix}.{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    @cached_property
    def checkpoints(self) -> str:
        """The run's checkpoint topic: every relay of the run writes its own key there."""
        return self.name("checkpoints")

    def name(self, what: str) -> str:
        """A name unique to this run (for topics the relay creates itself, e.g. its checkpoints)."""
        name = f"{self._prefix}.{what}"
        self.created.append(name)
        return name

    def new(self, what: str, partitions: int = PARTITIONS) -> str:
        """A new, empty topic of `partitions` partitions."""
        name = self.name(f"{what}.{uuid.uuid4().hex[:6]}")
        ensure_topic(self.kafka, name, partitions=partitions)
        return name


@contextmanager
def run_topics(kafka: KafkaSettings, prefix: str) -> Iterator[Topics]:
    """The run's topics, deleted on exit (also when the run fails)."""
    topics = Topics(kafka, prefix)
    try:
        yield topics
    finally:
        _delete(kafka, topics.created)


def _delete(kafka: KafkaSettings, names: list[str]) -> None:
    """Best effort: a broker that is away must not replace the run's own error with this one."""
    if not names:
        return
    admin = AdminClient(kafka.client_config())  # kept referenced: a collected client fails its futures
    for name, future in admin.delete_topics(names, request_timeout=30).items():
        try:
            future.result(timeout=60)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # never created: nothing to delete
                log.warning("could not delete benchmark topic %r (%s); delete it by hand", name, exc)


def committed_event_ids(kafka: KafkaSettings, topic: str, timeout: float = 120.0) -> Counter[str]:
    """How often each event id occurs among the committed records of `topic` (read_committed, to
    the end of every partition): the count a benchmark's exactly-N check compares against."""
    metadata = AdminClient(kafka.client_config()).list_topics(topic, timeout=10)
    partitions = len(metadata.topics[topic].partitions)
    consumer = read_committed_consumer(kafka, {"enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in range(partitions)])
    seen: Counter[str] = Counter()
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            if time.monotonic() > deadline:
                raise BenchmarkError(f"could not read {topic!r} to its end within {timeout:.0f}s")
            for message in consumer.consume(10_000, 1.0):
                _count(message, seen, at_end)
    finally:
        consumer.close()
    return seen


def _count(message: confluent_kafka.Message, seen: Counter[str], at_end: set[int]) -> None:
    error = message.error()
    if error is not None and error.code() == KafkaError._PARTITION_EOF:
        at_end.add(message.partition() or 0)
    elif error is not None:
        raise BenchmarkError(f"reading {message.topic()!r} failed: {error.str()}")
    else:
        seen[header(message, HEADER_EVENT_ID)] += 1


def header(message: confluent_kafka.Message, name: str) -> str:
    """The value of header `name` of a consumed record ('' if it has none)."""
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == name:
            return value.decode() if isinstance(value, bytes) else value or ""
    return ""


def read_committed_consumer(
    kafka: KafkaSettings, extra: dict[str, str | int | bool] | None = None
) -> Consumer:
    """A consumer that sees only committed transactions, in a group of its own, storing no offsets."""
    return Consumer(
        kafka.client_config(
            {
                "group.id": f"outboxkit-bench-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                **(extra or {}),
            }
        )
    )


def check_exactly(variant: str, expected: Iterable[str], seen: Counter[str]) -> None:
    """Refuse a figure unless the topic holds every expected event exactly once and nothing else."""
    wanted = Counter(expected)
    if seen == wanted:
        return
    missing = sum((wanted - seen).values())
    extra = sum((seen - wanted).values())
    raise BenchmarkError(
        f"{variant}: the topic holds {sum(seen.values())} committed records for {sum(wanted.values())} "
        f"events ({missing} missing, {extra} duplicated or foreign), not exactly one per event: "
        "its rate would not measure delivering them"
    )


def broker_facts(kafka: KafkaSettings) -> dict[str, str]:
    """The broker address and client library: what Kafka-bound figures depend on besides the code."""
    metadata = AdminClient(kafka.client_config()).list_topics(timeout=10)
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "brokers": ", ".join(f"{b.host}:{b.port}" for b in metadata.brokers.values()),
        "cluster_id": str(metadata.cluster_id),
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": metadata_version("confluent-kafka"),
    }
