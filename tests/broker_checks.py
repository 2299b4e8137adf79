"""Probes of the two broker behaviours every outboxkit guarantee rests on.

They are plain functions so they can be pointed at any broker: the test suite runs them against
the real one, and against librdkafka's mock cluster to show that they tell the two apart.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition


@dataclass
class Visibility:
    read_committed: list[bytes]
    read_uncommitted: list[bytes]


def abort_then_commit(bootstrap: str, topic: str) -> Visibility:
    """Abort a transaction holding b'aborted', commit one holding b'committed', read both ways."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"probe-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted")
    producer.flush(30)  # the record is written to the log before the abort marker
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)
    return Visibility(
        read_all(bootstrap, topic, "read_committed"), read_all(bootstrap, topic, "read_uncommitted")
    )


def read_all(bootstrap: str, topic: str, isolation: str, timeout: float = 20.0) -> list[bytes]:
    """Every record value of partition 0, read to the end with the given isolation level."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return values
            if error is None:
                values.append(message.value() or b"")
        raise AssertionError(f"did not reach the end of {topic} within {timeout}s")
    finally:
        consumer.close()


def zombie_commit(bootstrap: str, topic: str) -> KafkaError | None:
    """Open a transaction, let a second producer with the same id take over, then try to commit.

    Returns the error the first (zombie) producer's commit raised, or None if it committed.
    """
    transactional_id = f"probe-{uuid.uuid4().hex}"
    zombie = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce(topic, b"zombie")
    zombie.flush(30)
    successor = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    successor.init_transactions(60)
    try:
        zombie.commit_transaction(30)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        return error
    return None
