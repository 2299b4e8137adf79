"""Creating topics the relay depends on (its checkpoint topic; event topics in the demo), and
reading back which events are in them (`relay reset-slot`)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from relay.errors import RelayError
from runtime.kafka import KafkaSettings
from wire.headers import HEADER_EVENT_ID


def ensure_topic(
    kafka: KafkaSettings, name: str, *, partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    """Create `name` unless it exists. An existing topic is left as it is, whatever its settings."""
    admin = AdminClient(kafka.client_config())
    futures = admin.create_topics([NewTopic(name, partitions, -1, config=config or {})], request_timeout=30)
    try:
        futures[name].result(timeout=60)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise RelayError(f"cannot create Kafka topic {name!r}: {error.str()}") from exc


def published_event_ids(kafka: KafkaSettings, topics: Iterable[str], idle_timeout: float = 30.0) -> set[str]:
    """The event ids of every committed record in `topics` (read_committed, from each partition's
    start to its end as it stands now; no consumer group, nothing committed). A topic that does
    not exist holds none. Raises `RelayError` if Kafka cannot be read, or gives nothing for
    `idle_timeout` seconds before the ends are reached."""
    consumer = Consumer(
        kafka.client_config(
            {
                "group.id": "outboxkit-relay-reset-slot",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    try:
        pending = [where for topic in topics for where in _filled_partitions(consumer, topic)]
        consumer.assign(pending)
        return _event_ids(consumer, {(where.topic, where.partition) for where in pending}, idle_timeout)
    except KafkaException as exc:
        raise RelayError(f"cannot read back what is in Kafka: {exc}") from exc
    finally:
        consumer.close()


def _filled_partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    metadata = consumer.list_topics(topic, timeout=30).topics[topic]
    if metadata.error is not None:
        if metadata.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return []
        raise RelayError(f"cannot read back topic {topic!r}: {metadata.error.str()}")
    filled = []
    for partition in metadata.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if high > low:
            filled.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
    return filled


def _event_ids(consumer: Consumer, pending: set[tuple[str, int]], idle_timeout: float) -> set[str]:
    found: set[str] = set()
    last_news = time.monotonic()
    while pending:
        batch = consumer.consume(10_000, 1.0)
        if batch:
            last_news = time.monotonic()
        elif time.monotonic() - last_news > idle_timeout:
            raise RelayError(f"Kafka gave nothing for {idle_timeout:.0f}s; still unread: {sorted(pending)}")
        for message in batch:
            _take(message, found, pending)
    return found


def _take(message: Message, found: set[str], pending: set[tuple[str, int]]) -> None:
    """Add the record's event id to `found`, or, at a partition's end, take it off `pending`."""
    error = message.error()
    if error is not None and error.code() == KafkaError._PARTITION_EOF:
        pending.discard((message.topic() or "", message.partition() or 0))
    elif error is not None:
        raise RelayError(f"cannot read back what is in Kafka: {error.str()}")
    elif (event_id := _event_id(message)) is not None:
        found.add(event_id)


def _event_id(message: Message) -> str | None:
    raw = message.headers() or []
    for name, value in raw.items() if isinstance(raw, dict) else raw:
        if name == HEADER_EVENT_ID and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None
