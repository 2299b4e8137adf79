"""The relay as an OS process for tests: `outboxkit relay run` started against a PostgreSQL app
database, and what its outcome must be, read from Kafka by an independent read_committed consumer.
Shared by the process tests (`test_relay_process.py`) and the capture contract suite
(`test_capture_contract.py`), which runs the crash guarantees once per capture source."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from outbox.settings import WriteAs
from runtime.kafka import KafkaSettings
from runtime.process import ExitCode
from tests.conftest import PgSchema
from tests.helpers import Record, committed_records
from tests.models import Base, Thing


class RelayProcess:
    """`outboxkit relay run` as a child process, its log lines collected as they come."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "outboxkit.cli", "--log-level", "DEBUG", "relay", "run", *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()  # its lock is reentrant: count() works inside wait_for()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for line in self.lines)

    def wait_for(self, text: str, times: int = 1, timeout: float = 60) -> None:
        """Block until `text` has appeared in `times` log lines."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.count(text) >= times, timeout):
                raise AssertionError(
                    f"{times}x {text!r} not logged within {timeout}s:\n{''.join(self.lines[-20:])}"
                )

    def wait_for_any(self, texts: tuple[str, ...], timeout: float = 60) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: any(self.count(text) for text in texts), timeout):
                raise AssertionError(
                    f"none of {texts} logged within {timeout}s:\n{''.join(self.lines[-20:])}"
                )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


@dataclass
class Sidecar:
    """An app database on PostgreSQL, its topic, and a way to start relay processes for it."""

    app: Engine
    topic: str
    env: dict[str, str]
    notify: bool = True
    write_as: WriteAs = "row"  # how the app writes its events (OUTBOXKIT_OUTBOX_WRITE_AS)

    def start(self, **env: str) -> RelayProcess:
        return RelayProcess(self.env | env)

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
        notify = "outboxkit" if self.notify else ""
        settings = OutboxSettings(topic_template=self.topic, notify_channel=notify, write_as=self.write_as)
        for n in range(first, first + count):
            with Session(self.app, info={SETTINGS_KEY: settings}) as session:
                session.add(Thing(group=f"g{n % groups}", n=n))
                session.commit()


@contextmanager
def running_sidecar(
    kafka: KafkaSettings, pg_schema: PgSchema, topic: str, names: Callable[[str], str], **env: str
) -> Iterator[Sidecar]:
    """An app database in `pg_schema` publishing to `topic`, with relay settings `env` on top of the
    defaults (small batches, quick polls)."""
    app = create_engine(pg_schema.url, connect_args=pg_schema.connect_args, pool_pre_ping=True)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    url = make_url(pg_schema.url).update_query_dict(pg_schema.connect_args)
    base = os.environ | {
        "OUTBOXKIT_RELAY_DATABASE_URL": url.render_as_string(hide_password=False),
        "OUTBOXKIT_RELAY_SOURCE_ID": names("src"),
        "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": names("ckpt"),
        "OUTBOXKIT_RELAY_BATCH_SIZE": "7",
        "OUTBOXKIT_RELAY_POLL_INTERVAL": "0.05",
        "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
    }
    try:
        yield Sidecar(app, topic, base | env)
    finally:
        app.dispose()


def assert_exactly_once_in_commit_order(records: list[Record], written: int, groups: int = 5) -> None:
    ids = [record.event_id for record in records]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert sorted(r.value["state"]["n"] for r in records) == list(range(written)), "an event is missing"
    for group in range(groups):
        ns = [r.value["state"]["n"] for r in records if r.key == f"g{group}"]
        assert ns == sorted(ns), f"key g{group} out of commit order"


def wait_for_records(kafka: KafkaSettings, topic: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(committed_records(kafka, topic)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} records in {topic} after {timeout:.0f}s"
        time.sleep(0.2)
