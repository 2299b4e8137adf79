"""Kafka facts the sink's tools need without joining the group: partitions, ends, offsets by time.

A group-less consumer reads metadata and watermarks, so `status` and `replay` work whether or not
sinks are running (and never trigger a rebalance of the ones that are).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from confluent_kafka import Consumer, KafkaException, TopicPartition

from outbox.kafka_settings import KafkaSettings
from sink.errors import SinkError

Where = tuple[str, int]


@contextmanager
def inspector(kafka: KafkaSettings) -> Iterator[Consumer]:
    consumer = Consumer(
        kafka.client_config({"group.id": "outboxkit-inspector", "isolation.level": "read_committed"})
    )
    try:
        yield consumer
    finally:
        consumer.close()


def reach(kafka: KafkaSettings, timeout: float) -> None:
    """Ask Kafka for its brokers: a SinkError if none answers within `timeout` seconds."""
    with inspector(kafka) as consumer:
        try:
            consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise SinkError(f"cannot reach Kafka: {exc.args[0].str()}") from exc
        finally:
            consumer.poll(0)  # serves what librdkafka reported meanwhile (unreachable: said once)
    kafka.client_log.reached()


def partitions(consumer: Consumer, topics: Iterable[str], timeout: float = 10.0) -> list[Where]:
    """Every partition of `topics`; a missing topic is an error that names it."""
    found = []
    for topic in topics:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        except KafkaException as exc:
            raise SinkError(f"cannot read the metadata of topic {topic!r} from Kafka: {exc}") from exc
        if metadata.error is not None:
            raise SinkError(
                f"topic {topic!r}: {metadata.error.str()} (is the name right, does it exist yet?)"
            )
        found += [(topic, partition) for partition in sorted(metadata.partitions)]
    return found


def ends(consumer: Consumer, wheres: Iterable[Where], timeout: float = 10.0) -> dict[Where, tuple[int, int]]:
    """(start, end) offsets per partition; the end is the last stable offset (read_committed)."""
    return {
        where: consumer.get_watermark_offsets(TopicPartition(*where), timeout=timeout) for where in wheres
    }


def offsets_at(
    consumer: Consumer, wheres: Iterable[Where], at: datetime, timeout: float = 10.0
) -> dict[Where, int]:
    """Per partition, the first offset whose timestamp is at or after `at` (the end if none is)."""
    millis = int(at.timestamp() * 1000)
    wanted = [TopicPartition(topic, partition, millis) for topic, partition in wheres]
    found = {}
    for tp in consumer.offsets_for_times(wanted, timeout=timeout):
        if tp.offset < 0:
            tp.offset = consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=timeout
            )[1]
        found[(tp.topic, tp.partition)] = tp.offset
    return found
