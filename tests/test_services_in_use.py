"""The PostgreSQL and Redis the suite runs against are the ones the mission needs."""

from __future__ import annotations

import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, text


def test_postgresql_runs_with_logical_wal_for_the_coming_wal_capture_mode(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        assert conn.execute(text("show wal_level")).scalar_one() == "logical"
        assert int(conn.execute(text("show server_version_num")).scalar_one()) >= 150000


def test_a_dramatiq_message_round_trips_through_the_test_redis(redis_url: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=f"outboxkit-test-{uuid.uuid4().hex[:8]}")
    received: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="probe")
    def record(value: int) -> None:
        received.append(value)

    record.send(42)
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("probe", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    assert received == [42]
