"""The PostgreSQL, Redis and RabbitMQ the suite runs against are the ones the mission needs."""

from __future__ import annotations

import uuid

import dramatiq
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name
from sqlalchemy import Engine, text


def test_postgresql_runs_with_logical_wal_for_the_coming_wal_capture_mode(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        assert conn.execute(text("show wal_level")).scalar_one() == "logical"
        assert int(conn.execute(text("show server_version_num")).scalar_one()) >= 150000


def test_a_dramatiq_message_round_trips_through_the_test_redis(redis_url: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=f"outboxkit-test-{uuid.uuid4().hex[:8]}")
    try:
        assert round_trip(broker, "probe") == [42]
    finally:
        broker.close()


def test_a_dramatiq_message_round_trips_through_the_test_rabbitmq(rabbitmq_url: str) -> None:
    broker = RabbitmqBroker(url=rabbitmq_url, confirm_delivery=True)
    queue = f"outboxkit-probe-{uuid.uuid4().hex[:8]}"  # RabbitMQ has no namespaces: a queue of its own
    try:
        assert round_trip(broker, queue) == [42]
    finally:
        for name in (queue, dq_name(queue), xq_name(queue)):  # with its delay and dead-letter queues
            broker.channel.queue_delete(name)
        broker.close()


def round_trip(broker: Broker, queue: str) -> list[int]:
    """Send one message through the broker and run it on a real Dramatiq worker."""
    received: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue)
    def record(value: int) -> None:
        received.append(value)

    record.send(42)
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue, timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    return received
