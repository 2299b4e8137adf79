"""The relay as the sidecar process it is: SIGKILLed at any moment, or paused into a zombie.

`outboxkit relay run` is started as an OS process against the real PostgreSQL and broker, and
the outcome is read from Kafka by an independent read_committed consumer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from outbox.kafka_settings import KafkaSettings
from relay import ExitCode
from tests.conftest import PgSchema
from tests.helpers import Record, committed_records
from tests.models import Base, Thing


@dataclass
class Sidecar:
    """An app database on PostgreSQL, its topic, and a way to start relay processes for it."""

    app: Engine
    topic: str
    env: dict[str, str]

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "outboxkit.cli", "--log-level", "DEBUG", "relay", "run", *extra],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def drain(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "outboxkit.cli", "relay", "run", "--drain"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == ExitCode.OK, done.stderr

    def write(self, count: int, *, first: int = 0, groups: int = 5) -> None:
        """`count` committed transactions, one new thing each (n = first, ...), over `groups` keys."""
        settings = OutboxSettings(topic_template=self.topic)
        for n in range(first, first + count):
            with Session(self.app, info={SETTINGS_KEY: settings}) as session:
                session.add(Thing(group=f"g{n % groups}", n=n))
                session.commit()


@pytest.fixture
def sidecar(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> Iterator[Sidecar]:
    app = create_engine(pg_schema.url, connect_args=pg_schema.connect_args)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    url = make_url(pg_schema.url).update_query_dict(pg_schema.connect_args)
    env = os.environ | {
        "OUTBOXKIT_RELAY_DATABASE_URL": url.render_as_string(hide_password=False),
        "OUTBOXKIT_RELAY_SOURCE_ID": unique_name("src"),
        "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": unique_name("ckpt"),
        "OUTBOXKIT_RELAY_BATCH_SIZE": "7",
        "OUTBOXKIT_RELAY_POLL_INTERVAL": "0.05",
        "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
    }
    yield Sidecar(app, new_topic(3), env)
    app.dispose()


def assert_exactly_once_in_commit_order(records: list[Record], written: int, groups: int = 5) -> None:
    ids = [record.event_id for record in records]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert sorted(r.value["state"]["n"] for r in records) == list(range(written)), "an event is missing"
    for group in range(groups):
        ns = [r.value["state"]["n"] for r in records if r.key == f"g{group}"]
        assert ns == sorted(ns), f"key g{group} out of commit order"


def kill_when(relay: subprocess.Popen[str], line_contains: str, *, skip: int = 0) -> str:
    """SIGKILL `relay` the moment its log shows `line_contains` for the (skip+1)th time."""
    assert relay.stderr is not None
    for line in relay.stderr:
        if line_contains in line:
            if skip == 0:
                relay.send_signal(signal.SIGKILL)
                relay.wait(10)
                return line
            skip -= 1
    raise AssertionError(f"the relay exited (code {relay.wait()}) before logging {line_contains!r}")


def test_a_relay_killed_right_after_a_kafka_commit_publishes_nothing_twice(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.write(60)
    for skip in (0, 2, 1):  # killed just after its 1st, then 3rd, then 2nd commit of each life
        line = kill_when(sidecar.start(), "committed Kafka transaction", skip=skip)
        assert "events" in line
    sidecar.drain()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 60)


def test_a_relay_killed_at_random_moments_while_the_app_writes_loses_and_duplicates_nothing(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    writer = threading.Thread(target=sidecar.write, args=(300,))
    writer.start()
    rng, kills = random.Random(7), 0
    while writer.is_alive() or kills < 6:
        relay = sidecar.start()
        time.sleep(rng.uniform(0.2, 1.5))
        relay.send_signal(signal.SIGKILL)
        relay.wait(10)
        kills += 1
    writer.join()
    sidecar.drain()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 300)


def test_a_paused_relay_that_resumes_after_a_successor_took_over_exits_fenced_and_duplicates_nothing(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.write(40)
    zombie = sidecar.start()
    kill_when_paused = threading.Event()

    def pause_after_first_commit() -> None:
        assert zombie.stderr is not None
        for line in zombie.stderr:
            if "committed Kafka transaction" in line:
                zombie.send_signal(signal.SIGSTOP)
                kill_when_paused.set()
                break
        zombie.stderr.read()  # keep its pipe from filling up

    threading.Thread(target=pause_after_first_commit, daemon=True).start()
    assert kill_when_paused.wait(60), "the first relay never committed"

    sidecar.write(40, first=40)  # the app keeps writing while the zombie sleeps
    sidecar.drain()  # the successor: fences the zombie, publishes everything
    zombie.send_signal(signal.SIGCONT)
    try:
        assert zombie.wait(60) == ExitCode.FENCED
    finally:
        zombie.kill()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 80)
