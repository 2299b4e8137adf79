"""The PostgreSQL and Redis the suite runs against are the ones the mission needs."""

from __future__ import annotations

import uuid
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from outbox import metadata, outbox_table, publish


def test_postgresql_runs_with_logical_wal_for_the_coming_wal_capture_mode(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        assert conn.execute(text("show wal_level")).scalar_one() == "logical"
        assert int(conn.execute(text("show server_version_num")).scalar_one()) >= 150000


@pytest.fixture(params=["sqlite", "postgresql"])
def app_db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        from sqlalchemy import create_engine  # noqa: PLC0415

        engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        engine = request.getfixturevalue("pg_engine")
    metadata.create_all(engine)
    return engine


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(outbox_table)).scalar_one()


def test_published_events_commit_and_roll_back_with_the_business_transaction(app_db: Engine) -> None:
    def publish_one(session: Session) -> None:
        publish(session, topic="t", event_type="E", aggregate_type="a", aggregate_id="1", payload={})

    with Session(app_db) as session:
        publish_one(session)
        session.rollback()
    assert count_rows(app_db) == 0

    with Session(app_db) as session:
        publish_one(session)
        session.commit()
    assert count_rows(app_db) == 1


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
