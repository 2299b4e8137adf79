"""Kafka facts the sink's tools need without joining the group: partitions, ends, offsets by time.

A group-less consumer reads metadata and watermarks, so `status` and `replay` work whether or not
sinks are running (and never trigger a rebalance of the ones that are).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from runtime.kafka import KafkaSettings
from sink.errors import SinkError
from sink.records import Where

COUNTED = 1000  # offsets behind up to which status reads and counts the records (a quick read)


@contextmanager
def inspector(kafka: KafkaSettings) -> Iterator[Consumer]:
    consumer = Consumer(
        kafka.client_config(
            {
                "group.id": "outboxkit-inspector",  # never joined: partitions are assigned, not subscribed
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",
            }
        )
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


def records_behind(consumer: Consumer, where: Where, start: int, end: int, timeout: float = 10.0) -> int:
    """The records in [`start`, `end`) a read_committed consumer gets: what is left to apply.

    Offsets alone over-count: each relay transaction ends with a commit marker, an offset holding
    no record, so a sink that applied everything would be "1 behind". Up to `COUNTED` offsets
    apart the records are read and counted (markers and aborted records are not records); further
    apart, the offset distance is returned, markers included, rather than reading the backlog.
    """
    if end - start > COUNTED or end <= start:
        return max(0, end - start)
    consumer.assign([TopicPartition(*where, start)])
    try:
        return _count_to(consumer, end, most=end - start, deadline=time.monotonic() + timeout)
    finally:
        consumer.unassign()


def _count_to(consumer: Consumer, end: int, *, most: int, deadline: float) -> int:
    """Records consumed below offset `end`, up to the partition's end; `most` (the offset distance)
    if that is not reached in time, so a slow broker never makes the lag look smaller than it is."""
    counted = 0
    while time.monotonic() < deadline:
        for message in consumer.consume(most + 1, 0.2):
            error, offset = message.error(), message.offset() or 0
            if error is None and offset < end:
                counted += 1
            elif error is None or error.code() == KafkaError._PARTITION_EOF:
                return counted
            else:
                return most
    return most
