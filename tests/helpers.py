"""Small builders shared by the pipeline tests. No fakes: they write real rows and real records."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from opentelemetry.trace import Tracer
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from outbox import SETTINGS_KEY, OutboxSettings, metadata, outbox_table
from relay import Relay
from relay.capture import CaptureMode, CaptureSource
from runtime.kafka import KafkaSettings
from tests.models import Base, Thing
from wire import Envelope, Signer
from wire.headers import HEADER_EVENT_ID


def sqlite_app(tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    metadata.create_all(engine)
    Base.metadata.create_all(engine)
    return engine


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """The rows `query` returns on the database at `url`, read through an engine of its own."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def emit(engine: Engine, topic: str, count: int, *, key: str = "k") -> list[str]:
    """Commit `count` new things of aggregate `key` in one transaction; return their event ids in order."""
    settings = OutboxSettings(topic_template=topic)
    with Session(engine, info={SETTINGS_KEY: settings}) as session, session.begin():
        session.add_all(Thing(group=key, n=n) for n in range(count))
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_table.c.event_id).order_by(outbox_table.c.id.desc()).limit(count))
        return [row.event_id for row in rows][::-1]


def make_relay(
    engine: Engine,
    kafka: KafkaSettings,
    source_id: str,
    checkpoint_topic: str,
    *,
    batch_size: int = 500,
    tracer: Tracer | None = None,
    signer: Signer | None = None,
    capture: CaptureMode | CaptureSource = "poll",
) -> Relay:
    return Relay.for_shard(
        engine,
        kafka,
        source_id,
        checkpoint_topic,
        batch_size=batch_size,
        signer=signer,
        tracer=tracer,
        capture=capture,
    )


@dataclass(frozen=True)
class Record:
    """A record as an independent read_committed consumer sees it."""

    partition: int
    key: str | None
    value: Any
    headers: dict[str, str]

    @property
    def event_id(self) -> str:
        return self.headers[HEADER_EVENT_ID]


def committed_records(kafka: KafkaSettings, topic: str) -> list[Record]:
    """Every committed record of `topic`, partition by partition, each in offset order."""
    partitions = len(
        AdminClient(kafka.client_config()).list_topics(topic, timeout=10).topics[topic].partitions
    )
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
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Record] = []
    at_end: set[int] = set()
    try:
        while len(at_end) < partitions:
            message = consumer.poll(10)
            assert message is not None, f"no end of {topic} in sight"
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                continue
            assert error is None, error
            key = message.key()
            records.append(
                Record(
                    partition=message.partition(),
                    key=None if key is None else key.decode(),
                    value=json.loads(message.value()),
                    headers={name: raw.decode() for name, raw in message.headers() or []},
                )
            )
    finally:
        consumer.close()
    return sorted(records, key=lambda r: r.partition)  # stable: offset order within a partition


def committed_event_ids(kafka: KafkaSettings, topic: str) -> list[str]:
    return [record.event_id for record in committed_records(kafka, topic)]


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
