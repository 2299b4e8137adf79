"""Small builders shared by the pipeline tests. No fakes: they write real rows and real records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from outbox import SETTINGS_KEY, OutboxSettings, metadata, outbox_table
from outbox.envelope import HEADER_EVENT_ID, Envelope
from outbox.kafka_settings import KafkaSettings
from relay import Checkpoints, Relay, SqliteCapture, TransactionalPublisher
from tests.models import Base, Thing


def sqlite_app(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    metadata.create_all(engine)
    Base.metadata.create_all(engine)
    return engine


def emit(engine: Engine, topic: str, count: int, *, key: str = "k") -> list[str]:
    """Commit `count` new things of aggregate `key` in one transaction; return their event ids in order."""
    settings = OutboxSettings(topic_template=topic)
    with Session(engine, info={SETTINGS_KEY: settings}) as session, session.begin():
        session.add_all(Thing(group=key, n=n) for n in range(count))
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_table.c.event_id).order_by(outbox_table.c.id.desc()).limit(count))
        return [row.event_id for row in rows][::-1]


def make_relay(engine: Engine, kafka: KafkaSettings, source_id: str, checkpoint_topic: str) -> Relay:
    return Relay(
        SqliteCapture(engine),
        TransactionalPublisher(kafka, f"outboxkit-relay.{source_id}"),
        Checkpoints(kafka, checkpoint_topic, source_id),
        poll_interval=0.05,
    )


def committed_event_ids(kafka: KafkaSettings, topic: str) -> list[str]:
    """Event ids as a read_committed consumer sees them on partition 0, in offset order."""
    consumer = Consumer(
        kafka.client_config(
            {
                "group.id": f"check-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "enable.auto.commit": False,
            }
        )
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    ids: list[str] = []
    try:
        while True:
            message = consumer.poll(10)
            assert message is not None, f"no end of {topic} in sight"
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                return ids
            assert error is None, error
            ids.append(dict(message.headers() or [])[HEADER_EVENT_ID].decode())
    finally:
        consumer.close()


def envelope(topic: str, n: int, *, event_id: str | None = None) -> Envelope:
    return Envelope(
        event_id=event_id or str(uuid.uuid4()),
        topic=topic,
        key=f"key-{n % 3}".encode(),
        payload=f'{{"n":{n}}}'.encode(),
        event_type="Tested",
        aggregate_type="thing",
        aggregate_id=f"key-{n % 3}",
    )


def produce(kafka: KafkaSettings, records: Sequence[Envelope | bytes], topic: str) -> None:
    """Plain (non-transactional) produce of envelopes, or of raw garbage bytes, to partition 0."""
    producer = Producer(kafka.client_config({"enable.idempotence": True}))
    for record in records:
        if isinstance(record, Envelope):
            producer.produce(
                topic, record.payload, record.key, partition=0, headers=list(record.kafka_headers())
            )
        else:
            producer.produce(topic, record, b"junk", partition=0)
    assert producer.flush(30) == 0
