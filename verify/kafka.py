"""Every committed record of some topics, read by a consumer of the checker's own.

No consumer group (nothing is committed, no sink is disturbed): each partition is assigned from
its start and read up to its end as it stands when the check begins, read_committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from runtime.kafka import KafkaSettings
from verify.errors import VerifyError
from wire.headers import (
    HEADER_AGGREGATE_ID,
    HEADER_AGGREGATE_TYPE,
    HEADER_AGGREGATE_VERSION,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
)

# What a partition answers while its leader moves (a broker restarting): asked again, not an error.
_MOVING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TRANSPORT}


@dataclass(frozen=True)
class Seen:
    """One committed record as the checker saw it. Fields are None where a header is missing."""

    topic: str
    partition: int
    offset: int
    key: str | None
    event_id: str | None
    event_type: str | None
    aggregate: tuple[str, str] | None
    version: int | None


def committed(kafka: KafkaSettings, topics: Iterable[str], timeout: float = 30.0) -> list[Seen]:
    """The committed records of `topics`, in offset order per partition."""
    consumer = Consumer(
        kafka.client_config(
            {
                "group.id": "outboxkit-verify",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    try:
        ends = _ends(consumer, topics, timeout)
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for (t, p), end in ends.items() if end > 0])
        return _read(consumer, {where for where, end in ends.items() if end > 0}, timeout)
    finally:
        consumer.close()


def _ends(consumer: Consumer, topics: Iterable[str], timeout: float) -> dict[tuple[str, int], int]:
    ends = {}
    for topic in topics:
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        except KafkaException as exc:
            raise VerifyError(f"cannot read topic {topic!r} from Kafka: {exc}") from exc
        if metadata.error is not None:
            raise VerifyError(f"topic {topic!r}: {metadata.error.str()}")
        for partition in metadata.partitions:
            ends[(topic, partition)] = _end(consumer, TopicPartition(topic, partition), timeout)
    return ends


def _end(consumer: Consumer, where: TopicPartition, timeout: float) -> int:
    """The partition's end, asked again while the broker says it is moving (a restart, a new leader)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(where, timeout=timeout)[1])
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if (not error.retriable() and error.code() not in _MOVING) or time.monotonic() > deadline:
                raise VerifyError(
                    f"cannot read the end of {where.topic}[{where.partition}]: {error.str()}"
                ) from exc
            time.sleep(0.5)


def _read(consumer: Consumer, pending: set[tuple[str, int]], timeout: float) -> list[Seen]:
    seen: list[Seen] = []
    idle = 0.0
    while pending:
        batch = consumer.consume(10_000, 1.0)
        idle = 0.0 if batch else idle + 1.0
        if idle > timeout:
            raise VerifyError(f"Kafka gave nothing for {timeout:.0f}s; still unread: {sorted(pending)}")
        for message in batch:
            error = message.error()
            where = (message.topic() or "", message.partition() or 0)
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                pending.discard(where)
            elif error is not None:
                raise VerifyError(f"Kafka: {error.str()}")
            else:
                seen.append(_seen(message))
    return seen


def _seen(message: Message) -> Seen:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = {
        name: value.decode(errors="replace") if isinstance(value, bytes) else value or ""
        for name, value in pairs
    }
    version = headers.get(HEADER_AGGREGATE_VERSION, "")
    aggregate_type, aggregate_id = headers.get(HEADER_AGGREGATE_TYPE), headers.get(HEADER_AGGREGATE_ID)
    key = message.key()
    return Seen(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=None if key is None else key.decode(errors="replace"),
        event_id=headers.get(HEADER_EVENT_ID),
        event_type=headers.get(HEADER_EVENT_TYPE),
        aggregate=None if aggregate_type is None or aggregate_id is None else (aggregate_type, aggregate_id),
        version=int(version) if version.isascii() and version.isdigit() else None,
    )
