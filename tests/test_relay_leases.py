"""Leases and shards: one publisher per shard, nothing published twice when the layout changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, create_engine, insert, text

import outbox
from relay import AdvisoryLeases, Checkpoints, PostgresCapture, RelayService, RelaySettings, RelayStats, Shard
from relay.capture import Position, capture_for
from relay.errors import CheckpointError, ConfigError, LeaseLostError
from relay.publisher import TransactionalPublisher
from relay.run import transactional_id
from runtime.kafka import KafkaSettings
from tests.conftest import PgSchema


@pytest.fixture
def app(pg_schema: PgSchema) -> Iterator[Engine]:
    engine = create_engine(pg_schema.url, connect_args=pg_schema.connect_args)
    outbox.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_two_relays_never_hold_the_same_shard_and_a_freed_shard_is_taken(
    app: Engine, unique_name: Callable[[str], str]
) -> None:
    source = unique_name("src")
    first = AdvisoryLeases(app, source, 4, max_held=3, interval=0.1)
    second = AdvisoryLeases(app, source, 4, interval=0.1)
    other = AdvisoryLeases(app, unique_name("other"), 4)
    assert first.refresh() == {Shard(0, 4), Shard(1, 4), Shard(2, 4)}
    assert second.refresh() == {Shard(3, 4)}
    assert other.refresh() == {Shard(i, 4) for i in range(4)}  # another source's shards are its own

    first.close()
    eventually(lambda: second.refresh() == {Shard(i, 4) for i in range(4)})
    for leases in (second, other):
        leases.close()


def test_a_holder_whose_lease_connection_dies_stops_with_lease_lost(
    app: Engine, unique_name: Callable[[str], str]
) -> None:
    leases = AdvisoryLeases(app, unique_name("src"), 2, interval=0.1)
    assert len(leases.refresh()) == 2
    with app.connect() as admin:  # what a database restart, or the lease timeout, does to it
        admin.execute(
            text(
                "select pg_terminate_backend(pid) from pg_locks "
                "where locktype = 'advisory' and pid <> pg_backend_pid() and granted"
            )
        )
    with pytest.raises(LeaseLostError, match="stopped publishing them"):
        eventually(lambda: not leases.refresh())
    eventually(lambda: len(leases.refresh()) == 2)  # and can rejoin
    leases.close()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.05)


def test_each_shard_captures_only_its_keys_and_together_they_capture_all(app: Engine) -> None:
    rows = [
        {"event_id": f"e{n}", "aggregatetype": "t", "aggregateid": str(n), "aggregateversion": 1, "type": "T",
         "topic": "t", "key": str(n), "payload": "{}", "shard_key": n * 7919 if n % 5 else None}
        for n in range(40)
    ]  # fmt: skip
    with app.begin() as conn:
        conn.execute(
            insert(outbox.outbox_table).values(
                xid=text("CAST(CAST(pg_current_xact_id() AS text) AS bigint)")
            ),
            rows,
        )
    seen: list[str] = []
    for index in range(3):
        batch = PostgresCapture(app, Shard(index, 3)).fetch(Position(), 100)
        keys = [r.envelope.aggregate_id for r in batch.rows]
        assert all(((rows[int(k)]["shard_key"] or 0) % 3) == index for k in keys)  # NULL (older rows) is 0
        seen += keys
    assert sorted(seen, key=int) == [str(n) for n in range(40)]


def test_a_source_published_with_another_shard_count_is_refused_not_published_again(
    kafka: KafkaSettings, unique_name: Callable[[str], str]
) -> None:
    topic, source = unique_name("ckpt"), unique_name("src")
    old = Checkpoints(kafka, topic, source)
    old.ensure_topic()
    publisher = TransactionalPublisher(kafka, transactional_id(source))
    publisher.start()
    publisher.publish([], old.record(Position(after_id=5)))
    publisher.close()

    assert old.read().after_id == 5
    with pytest.raises(CheckpointError, match="published with 1 shard"):
        Checkpoints(kafka, topic, source, Shard(0, 2)).read()
    other = Checkpoints(kafka, topic, source + "-b", Shard(0, 2))  # another source is not confused with it
    assert other.read() == Position()


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValidationError, match="lease_timeout must be more than twice lease_interval"):
        RelaySettings(lease_interval=5, lease_timeout=8)
    with pytest.raises(ValidationError, match="lease_timeout must be more than twice poll_interval"):
        RelaySettings(poll_interval=10)  # lease_timeout 15 by default
    with pytest.raises(ConfigError, match="SHARDS=1"):
        capture_for(create_engine("sqlite://"), Shard(0, 2))


class Starting:
    """Relays whose start waits until every shard's start has begun: started one after the other,
    the first would wait for the others for ever (the barrier breaks after its timeout)."""

    def __init__(self, shards: int) -> None:
        self.together = threading.Barrier(shards, timeout=20)
        self.started: list[Shard] = []

    def relay_for(self, shard: Shard) -> Any:
        self.together.wait()
        self.started.append(shard)
        return SimpleNamespace(
            step=lambda: 0, close=lambda: None, stats=RelayStats(), caught_up=True, wakeup_fd=lambda: None
        )


class Noted:
    """Leases, with what each refresh returned to the service."""

    def __init__(self, leases: AdvisoryLeases) -> None:
        self._leases = leases
        self.seen: list[frozenset[Shard]] = []

    def refresh(self) -> frozenset[Shard]:
        self.seen.append(self._leases.refresh())
        return self.seen[-1]

    def close(self) -> None:
        self._leases.close()

    @property
    def unheld(self) -> int:
        return self._leases.unheld


def test_a_successor_takes_every_shard_of_a_dead_holder_in_one_round_and_starts_them_side_by_side(
    app: Engine, unique_name: Callable[[str], str]
) -> None:
    source, everything = unique_name("src"), {Shard(i, 4) for i in range(4)}
    holder = AdvisoryLeases(app, source, 4, interval=0.1)
    assert holder.refresh() == everything
    successor = Noted(AdvisoryLeases(app, source, 4, interval=0.05))
    assert successor.refresh() == frozenset()
    starting = Starting(4)
    service = RelayService(successor, starting.relay_for, poll_interval=0.01, lease_interval=0.01)

    holder.close()  # the holder dies: its four shards are free at once
    service.run(lambda: len(starting.started) == 4)

    assert set(starting.started) == everything
    assert next(held for held in successor.seen if held) == everything  # one round took them all
