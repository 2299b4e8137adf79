"""The sink's Kafka boundary: a read_committed consumer that starts where the warehouse says.

* `isolation.level` is always `read_committed`: a read_uncommitted sink would apply events of
  relay transactions that were later aborted. Any other value is refused at start-up.
* Kafka-side offset commits are disabled. On every assignment the consumer seeks to the offsets
  stored in the warehouse with the data, so a crash can neither skip nor repeat a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from outbox.envelope import Envelope, EnvelopeError
from outbox.kafka_settings import KafkaSettings
from sink.errors import PoisonRecordError, SinkConfigError, SinkError
from sink.writer import Delivered

log = logging.getLogger("outboxkit.sink")
OffsetLoader = Callable[[Iterable[str]], dict[tuple[str, int], int]]


@dataclass
class Received:
    """What one poll produced: good events in order, then possibly the poison record that stopped it."""

    delivered: list[Delivered] = field(default_factory=list)
    poison: PoisonRecordError | None = None


class WarehouseConsumer:
    """Consumes outboxkit envelopes for one consumer group. Not thread-safe."""

    def __init__(
        self,
        kafka: KafkaSettings,
        group_id: str,
        topics: Sequence[str],
        load_offsets: OffsetLoader,
        *,
        isolation_level: str = "read_committed",
    ) -> None:
        if isolation_level != "read_committed":
            raise SinkConfigError(
                f"isolation_level={isolation_level!r} is refused: only 'read_committed' keeps events of "
                "aborted relay transactions out of the warehouse"
            )
        self._topics = list(topics)
        self._load_offsets = load_offsets
        self._at_end: dict[tuple[str, int], bool] = {}
        self._consumer = Consumer(
            kafka.client_config(
                {
                    "group.id": group_id,
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "enable.partition.eof": True,
                }
            )
        )
        self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def poll(self, max_records: int, timeout: float) -> Received:
        """Up to `max_records` envelopes. Stops early at the first record that is not an envelope."""
        received = Received()
        for message in self._consumer.consume(max_records, timeout):
            if not self._accept(message, received):
                break
        return received

    def caught_up(self) -> bool:
        """True once every assigned partition was read to its last committed record."""
        return bool(self._at_end) and all(self._at_end.values())

    def close(self) -> None:
        self._consumer.close()

    def _accept(self, message: Message, received: Received) -> bool:
        error = message.error()
        where = _coordinates(message)[:2]
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._at_end[where] = True
                return True
            if error.fatal():
                raise SinkError(f"fatal Kafka consumer error: {error.str()}")
            log.warning("Kafka consumer error (librdkafka retries it): %s", error.str())
            return True
        self._at_end[where] = False
        try:
            received.delivered.append(_delivered(message))
        except PoisonRecordError as poison:
            received.poison = poison
            return False
        return True

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self._load_offsets(self._topics)
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
            self._at_end[(tp.topic, tp.partition)] = False
        log.info("assigned %s", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._at_end.pop((tp.topic, tp.partition), None)
        consumer.unassign()


def _coordinates(message: Message) -> tuple[str, int, int]:
    """Topic, partition, offset: always set on consumed records and EOF events."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    return topic or "", -1 if partition is None else partition, -1 if offset is None else offset


def _delivered(message: Message) -> Delivered:
    topic, partition, offset = _coordinates(message)
    headers = message.headers() or []
    try:
        envelope = Envelope.from_kafka(
            topic,
            message.key(),
            message.value(),
            list(headers.items()) if isinstance(headers, dict) else headers,
        )
        envelope.payload.decode()
        if envelope.key is not None:
            envelope.key.decode()
    except EnvelopeError as exc:
        raise PoisonRecordError(
            exc.reason, topic=topic, partition=partition, offset=offset, raw=exc.value
        ) from exc
    except UnicodeDecodeError as exc:
        raise PoisonRecordError(
            f"key or payload is not UTF-8 ({exc})",
            topic=topic,
            partition=partition,
            offset=offset,
            raw=message.value(),
        ) from exc
    return Delivered(envelope=envelope, partition=partition, offset=offset)
