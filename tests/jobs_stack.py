"""The whole path of a job as OS processes, for tests/test_jobs_e2e.py.

    test process (the app) -- outbox.jobs.enqueue --> PostgreSQL outbox
    `outboxkit relay run` --> Kafka jobs topic --> `outboxkit jobs dispatch` --> Redis
    `python -m dramatiq tests.jobs_app` (workers) --> `effects` rows through the inbox

Every process is real and started from its command, each in a session of its own, so a SIGKILL
takes a `dramatiq` command with its worker processes, as when a pod or a node dies. One PostgreSQL
schema holds the app's outbox and the workers' tables (app database = worker database), one topic,
one consumer group and one queue belong to one test: the shared services are never restarted, only
a private Redis (`PrivateRedis`) when a test takes Redis away.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session

import outbox
from jobs.inbox import Inbox, InboxCounts
from outbox import SETTINGS_KEY, OutboxSettings
from outbox.jobs import enqueue
from outboxkit.chaos.processes import waited
from runtime.kafka import KafkaSettings
from tests.jobs_app_tables import FAILS_UNTIL_FIXED, RECORD_EFFECT, TABLES, deliveries, effects, parked
from tests.processes import ROOT, free_port, get, metric, outboxkit

CAP = 240.0  # seconds any target may take on a busy machine: never a timing under test
WORKER_THREADS = 8
# A SIGKILLed dispatcher is dropped from its consumer group after this long, not Kafka's default
# 45 s: the restarted one (or its peer) gets the dead one's partitions at once after that.
GROUP_TIMEOUTS = '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}'


class Child:
    """One process under test, in a session of its own, its output appended to `logs/<name>.log`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: dict[str, str], logs: Path, *, port: int | None = None
    ) -> None:
        self.name, self.argv, self.env, self.logs, self.port = name, list(argv), env, logs, port
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}.log"

    def start(self) -> Child:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, to the whole process group (a `dramatiq` command's workers die with it)."""
        self._signal(signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM; SIGKILL if it has not ended within `timeout`."""
        self._signal(signal.SIGTERM)
        if self.wait(timeout) is None:
            self.kill()

    def wait(self, timeout: float) -> int | None:
        return waited(self.popen, self._log, timeout)

    def counted(self, name: str) -> float:
        """The counter `name` of its /metrics (0 while it does not answer): what this life did."""
        assert self.port is not None, f"{self.name} serves no metrics"
        with suppress(OSError, ValueError):
            status, text = get(self.port, "/metrics")
            if status == 200:
                return metric(text, name)
        return 0

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, signum: int) -> None:
        if self.popen is not None:
            with suppress(ProcessLookupError):  # the group is gone already
                os.killpg(self.popen.pid, signum)


@dataclass
class JobsStack:
    """One app database (= worker database), jobs topic, consumer group and queue, and the
    commands to start relays, dispatchers and workers for them."""

    engine: Engine
    db_url: str
    kafka: KafkaSettings
    topic: str
    queue: str
    broker_url: str
    logs: Path
    names: Callable[[str], str]
    children: list[Child] = field(default_factory=list)
    app_broker: dramatiq.Broker = field(default_factory=StubBroker)

    def __post_init__(self) -> None:
        # The app declares the actors it enqueues, as an app importing the workers' actor module
        # would; `enqueue` only consults the broker, nothing is sent through it.
        for actor_name in (RECORD_EFFECT, FAILS_UNTIL_FIXED):
            dramatiq.actor(_stand_in, actor_name=actor_name, queue_name=self.queue, broker=self.app_broker)
        self.relay_source = self.names("src")
        self.group_id = self.names("jobs")

    # --- the processes -------------------------------------------------------------------------

    def relay(self) -> Child:
        env = {
            "OUTBOXKIT_RELAY_DATABASE_URL": self.db_url,
            "OUTBOXKIT_RELAY_SOURCE_ID": self.relay_source,
            "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": f"{self.relay_source}-ckpt",
            "OUTBOXKIT_RELAY_POLL_INTERVAL": "0.05",
            "OUTBOXKIT_RELAY_LEASE_TIMEOUT": "4",
            "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
        }
        port = free_port()
        env["OUTBOXKIT_RELAY_HTTP_PORT"] = str(port)
        return self._child("relay", [sys.executable, "-m", "outboxkit.cli", "relay", "run"], env, port)

    def dispatcher(
        self, *, batch_size: int = 100, module: Sequence[str] = ("outboxkit.cli",), **env: str
    ) -> Child:
        """`outboxkit jobs dispatch`, or another module's main that runs it (a crashing wrapper)."""
        args = ["jobs", "dispatch"] if module == ("outboxkit.cli",) else []
        port = int(env.get("OUTBOXKIT_JOBS_HTTP_PORT") or free_port())
        env = (
            self.jobs_env()
            | {"OUTBOXKIT_JOBS_BATCH_SIZE": str(batch_size), "OUTBOXKIT_JOBS_HTTP_PORT": str(port)}
            | env
        )
        return self._child("dispatcher", [sys.executable, "-m", *module, *args], env, port)

    def worker(self, **env: str) -> Child:
        argv = [sys.executable, "-m", "dramatiq", "tests.jobs_app", "--processes", "1"]
        worker_env = {
            "OUTBOXKIT_TEST_JOBS_DB_URL": self.db_url,
            "OUTBOXKIT_TEST_JOBS_BROKER_URL": self.broker_url,
            "OUTBOXKIT_TEST_JOBS_QUEUE": self.queue,
        }
        return self._child("worker", [*argv, "--threads", str(WORKER_THREADS)], worker_env | env)

    def jobs_env(self) -> dict[str, str]:
        return {
            "OUTBOXKIT_JOBS_BROKER_URL": self.broker_url,
            "OUTBOXKIT_JOBS_TOPIC": self.topic,
            "OUTBOXKIT_JOBS_GROUP_ID": self.group_id,
            "OUTBOXKIT_JOBS_MAX_BACKOFF": "1",
            "OUTBOXKIT_JOBS_INBOX_URL": self.db_url,
            "OUTBOXKIT_JOBS_QUEUES": json.dumps([self.queue]),
            "OUTBOXKIT_JOBS_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "OUTBOXKIT_JOBS_KAFKA__CONFIG": GROUP_TIMEOUTS,
        }

    def _child(self, role: str, argv: list[str], env: dict[str, str], port: int | None = None) -> Child:
        number = sum(child.name.startswith(role) for child in self.children)
        child = Child(f"{role}-{number}", argv, os.environ | env, self.logs, port=port)
        self.children.append(child)
        return child.start()

    def running(self, role: str) -> list[Child]:
        return [child for child in self.children if child.name.startswith(f"{role}-") and child.alive]

    def stop_all(self) -> None:
        for child in self.children:
            child.stop(timeout=20)

    # --- the app ---------------------------------------------------------------------------------

    def session(self) -> Session:
        return Session(self.engine, info={SETTINGS_KEY: OutboxSettings(jobs_topic=self.topic)})

    def enqueue(self, session: Session, n: int, *, actor: str = RECORD_EFFECT, **kwargs: Any) -> str:
        """Job n of `actor` into the outbox in `session`'s transaction; its message id."""
        message = self.app_broker.get_actor(actor).message(n, **kwargs)
        return enqueue(session, message, broker=self.app_broker).message_id

    def commit_jobs(self, ns: Sequence[int], **kwargs: Any) -> list[str]:
        """Jobs n in `ns`, all in one committed transaction; their message ids."""
        with self.session() as session, session.begin():
            return [self.enqueue(session, n, **kwargs) for n in ns]

    # --- what happened ---------------------------------------------------------------------------

    def effects(self) -> Counter[str]:
        """How many effect rows each message id has."""
        with self.engine.connect() as conn:
            counted = conn.execute(select(effects.c.message_id, func.count()).group_by(effects.c.message_id))
            return Counter({message_id: count for message_id, count in counted})

    def deliveries(self) -> int:
        """Messages the workers were handed, duplicates included."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(deliveries)) or 0)

    def parked(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(parked)) or 0)

    def inbox(self) -> InboxCounts:
        return Inbox(self.engine).counts()

    def status(self) -> dict[str, Any]:
        """`outboxkit jobs status --json` for the test's group and queue."""
        done = outboxkit("jobs", "status", "--json", env=self.jobs_env())
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def replay(self) -> str:
        """`outboxkit jobs replay` of the test's queue; what it said."""
        done = outboxkit("jobs", "replay", "--queue", self.queue, env=self.jobs_env())
        assert done.returncode == 0, done.stderr
        return done.stderr.strip()

    def settled(self) -> bool:
        """Every job dispatched (lag 0) and nothing left in the queue, waiting or running."""
        status = self.status()
        return status["lag"] == 0 and status["broker"] is None and not any(status["queues"].values())

    def until(self, condition: Callable[[], bool], what: str, cap: float = CAP) -> None:
        """Wait until `condition()`; past `cap`, fail saying `what` and how the processes ended."""
        deadline = time.monotonic() + cap
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not so within {cap:.0f}s\n{self.diagnosis()}")
            time.sleep(0.25)

    def diagnosis(self) -> str:
        effects_now = self.effects()
        rows, jobs = sum(effects_now.values()), len(effects_now)
        lines = [f"effects: {rows} rows of {jobs} jobs; deliveries: {self.deliveries()}"]
        for child in self.children[-6:]:
            lines.append(f"--- {child.name} (alive: {child.alive}):\n{child.tail()}")
        return "\n".join(lines)


def _stand_in(*args: Any, **kwargs: Any) -> None:
    """The app's declaration of a worker's actor: never run here."""


def assert_once_each(stack: JobsStack, expected: Sequence[str]) -> None:
    """The effects table has exactly one row per job in `expected`, and none of any other job."""
    found = stack.effects()
    twice = {message_id: count for message_id, count in found.items() if count > 1}
    assert not twice, f"{len(twice)} job(s) took effect more than once, e.g. {list(twice.items())[:3]}"
    missing = set(expected) - found.keys()
    assert not missing, f"{len(missing)} committed job(s) never took effect, e.g. {sorted(missing)[:3]}"
    phantom = found.keys() - set(expected)
    assert not phantom, f"{len(phantom)} job(s) took effect that were never committed: {sorted(phantom)[:3]}"


def create_tables(engine: Engine) -> None:
    outbox.metadata.create_all(engine)
    TABLES.create_all(engine)


def mark(engine: Engine, table: Any, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table).values(**values))


def redis_broker(url: str) -> RedisBroker:
    """A broker on the queues the dispatcher fills (Dramatiq's default namespace), to look at them."""
    return RedisBroker(url=url, middleware=[])


def forget_queue(url: str, queue: str) -> None:
    """Delete the test's keys from a shared Redis."""
    broker = redis_broker(url)
    try:
        for key in broker.client.scan_iter(f"dramatiq:{queue}*"):
            broker.client.delete(key)
    finally:
        broker.close()


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port, fsyncing every write to its
    append-only file (as scripts/services runs the shared one): it may be SIGKILLed and restarted."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.child = Child("redis", [self._binary(), *self._args()], dict(os.environ), home)
        self.kills = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.child.start()
        deadline = time.monotonic() + 60
        while not self.ping():
            assert time.monotonic() < deadline, f"private Redis did not start:\n{self.child.tail()}"
            time.sleep(0.1)

    def kill(self) -> None:
        self.child.kill()
        self.kills += 1

    def ping(self) -> bool:
        with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def _args(self) -> list[str]:
        return [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.home), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
        ]  # fmt: skip

    @staticmethod
    def _binary() -> str:
        found = shutil.which("redis-server")
        if found is None:
            import pytest  # noqa: PLC0415

            pytest.skip("redis-server is not installed; `scripts/services up redis` installs it")
        return found
