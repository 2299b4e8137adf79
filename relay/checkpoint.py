"""The relay's checkpoint: the outbox position up to which events are in Kafka.

It lives in a compacted Kafka topic, keyed by the outbox's source id, and is written **inside the
same Kafka transaction** as the events it covers (the design of Kafka Connect's exactly-once
sources, KIP-618). So the events of a batch and the checkpoint that says they were published
become visible together or not at all; a crash anywhere leaves the committed checkpoint equal to
what read_committed consumers can see.

Reading it back is only correct after `init_transactions()` on the relay's transactional id: that
call fences any older instance and aborts its open transaction, so the last stable offset moves
past it and a read_committed read to the end sees the final word.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from relay.capture.source import Position
from relay.errors import CheckpointError
from relay.shards import ONLY, Shard
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """The Kafka record that moves the checkpoint; produced inside the batch's transaction."""

    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Checkpoints:
    """Reads and encodes the checkpoint of one shard of an outbox source.

    Positions of different shard counts cannot be translated into each other, so reading refuses
    a source that has checkpoints of another shard count: starting over would publish again.
    """

    kafka: KafkaSettings
    topic: str
    source_id: str
    shard: Shard = ONLY

    @property
    def key(self) -> str:
        return self.source_id + self.shard.suffix

    def ensure_topic(self) -> None:
        # Compaction keeps only the newest checkpoint per source, so start-up reads stay short.
        ensure_topic(self.kafka, self.topic, config={"cleanup.policy": "compact"})

    def record(self, position: Position) -> CheckpointRecord:
        value = {"source": self.source_id, "shards": self.shard.count, "position": position.to_json()}
        return CheckpointRecord(self.topic, self.key.encode(), json.dumps(value).encode())

    def read(self, timeout: float = 30.0) -> Position:
        """The last committed position of this source (the start if it never published)."""
        if not self._topic_exists():
            return Position()  # no relay has started yet: nothing published
        consumer = Consumer(
            self.kafka.client_config(
                {
                    "group.id": f"outboxkit-checkpoint-reader.{self.key}",
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    # Offset 0, not OFFSET_BEGINNING, below: the logical offset costs a lookup that
                    # took 0.5 s, and the broker then held the fetch at the end for its default
                    # 500 ms wait — 1 s of every relay start (and of each shard a successor takes
                    # over), against about 20 ms now. Should compaction have moved the log start
                    # past 0, the reset to the earliest offset still reads the whole topic.
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 10,
                }
            )
        )
        try:
            return self._read_to_end(consumer, timeout)
        finally:
            consumer.close()

    def _topic_exists(self) -> bool:
        try:
            metadata = AdminClient(self.kafka.client_config()).list_topics(self.topic, timeout=30)
        except KafkaException as exc:
            raise CheckpointError(
                f"cannot reach Kafka to read checkpoint topic {self.topic!r}: {exc}"
            ) from exc
        found = metadata.topics.get(self.topic)
        return found is not None and found.error is None

    def _read_to_end(self, consumer: Consumer, timeout: float) -> Position:
        consumer.assign([TopicPartition(self.topic, 0, 0)])
        position, deadline = Position(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return position
            if error is not None:
                raise CheckpointError(f"reading checkpoint topic {self.topic!r} failed: {error.str()}")
            key, value = (message.key() or b"").decode(), message.value()
            if value is None or not (key == self.source_id or key.startswith(self.source_id + "#")):
                continue
            found = json.loads(value)
            self._check_layout(key, int(found.get("shards", 1)))
            if key == self.key:
                position = Position.from_json(found["position"])
        raise CheckpointError(
            f"could not read checkpoint topic {self.topic!r} to its end within {timeout:.0f}s; "
            "is the broker reachable and the topic's partition online?"
        )

    def _check_layout(self, key: str, shards: int) -> None:
        if shards != self.shard.count:
            raise CheckpointError(
                f"source {self.source_id!r} was published with {shards} shard(s) (checkpoint {key!r} in "
                f"{self.topic!r}), this relay is set to {self.shard.count}: positions do not carry over "
                "between shard counts. Set OUTBOXKIT_RELAY_SHARDS back to the old count, or let the "
                "old relays drain the outbox and start the new layout under a new OUTBOXKIT_RELAY_SOURCE_ID "
                "once cleanup has removed the published rows"
            )
