"""The worker side of jobs, with real `dramatiq` worker processes (tests/jobs_worker_app.py) on
real Redis (and RabbitMQ where one is given): one effect per message id, however often Dramatiq
delivers it; dead letters counted, listed and replayed; inbox rows pruned by age."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, create_engine, func, insert, make_url, select, update

from jobs.dead_letters import dead_letter_queues
from jobs.inbox import Inbox, InboxCounts
from outbox import schema
from outbox.table import job_inbox_table
from tests.conftest import PgSchema
from tests.jobs_worker_tables import APP, effects, switches
from tests.processes import ROOT, wait_until
from wire.jobs import TRACE_OPTION

CAP = 120  # seconds any condition may take on a busy machine; never a timing being tested


@pytest.fixture(params=["sqlite", "postgresql"])
def worker_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The worker's database, migrated, with the app's tables: a URL a worker process can use."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'worker.db'}"
    else:
        pg: PgSchema = request.getfixturevalue("pg_schema")
        url = make_url(pg.url).update_query_dict(pg.connect_args).render_as_string(hide_password=False)
    engine = create_engine(url)
    schema.upgrade(engine)
    APP.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def db(worker_db: str) -> Iterator[Engine]:
    engine = create_engine(worker_db)
    yield engine
    engine.dispose()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@dataclass
class Workers:
    """Worker processes of tests/jobs_worker_app.py on one queue, and a broker to send to it."""

    env: dict[str, str]
    flags: Path
    broker: dramatiq.Broker
    queue: str
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, **settings: str) -> subprocess.Popen[bytes]:
        env = self.env | {f"OUTBOXKIT_TEST_WORKER_{name.upper()}": value for name, value in settings.items()}
        log = (self.flags / f"worker-{len(self.running)}.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "tests.jobs_worker_app", "--processes", "1", "--threads", "2"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the CLI's parent and its worker child
        )
        self.running.append(worker)
        return worker

    def kill(self, worker: subprocess.Popen[bytes]) -> None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=CAP)

    def send(self, actor: str, *, message: dramatiq.Message[Any] | None = None, **kwargs: Any) -> Any:
        message = message or dramatiq.Message(
            queue_name=self.queue, actor_name=actor, args=(), kwargs=kwargs, options={}
        )
        self.broker.enqueue(message)
        return message

    def started(self, key: str) -> bool:
        return (self.flags / f"started-{key}").exists()

    def spans(self) -> list[dict[str, Any]]:
        path = self.flags / "spans.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.flags.glob("worker-*.log")))


@pytest.fixture
def workers(
    broker_url: str, worker_db: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> Iterator[Workers]:
    queue, namespace = unique_name("q"), unique_name("ns")
    flags = tmp_path / "flags"
    flags.mkdir()
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "OUTBOXKIT_TEST_WORKER_DB_URL": worker_db,
        "OUTBOXKIT_TEST_WORKER_BROKER_URL": broker_url,
        "OUTBOXKIT_TEST_WORKER_NAMESPACE": namespace,
        "OUTBOXKIT_TEST_WORKER_QUEUE": queue,
        "OUTBOXKIT_TEST_WORKER_FLAGS": str(flags),
    }
    broker: dramatiq.Broker
    if broker_url.startswith("amqp"):
        broker = RabbitmqBroker(url=broker_url, confirm_delivery=True)
    else:
        broker = RedisBroker(url=broker_url, namespace=namespace)
    found = Workers(env, flags, broker, queue)
    yield found
    for worker in found.running:
        if worker.poll() is None:
            found.kill(worker)
    if isinstance(broker, RedisBroker):
        for key in broker.client.scan_iter(f"{namespace}:*"):
            broker.client.delete(key)
    broker.close()


def effect_count(db: Engine, key: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar(select(func.count()).where(effects.c.key == key)) or 0)


def test_one_message_id_delivered_twice_has_one_effect_and_counts_one_duplicate(
    workers: Workers, db: Engine
) -> None:
    message = workers.send("record", key="twice")
    workers.send("record", message=message)  # the same id again: what a dispatcher's retry sends
    workers.start()
    inbox = Inbox(db)
    wait_until(lambda: inbox.counts() == InboxCounts(done=1, duplicates=1), CAP)
    assert effect_count(db, "twice") == 1


@pytest.mark.parametrize("where", ["in_transaction", "before_ack"])
def test_a_worker_killed_mid_job_gets_the_job_again_and_the_effect_happens_once(
    workers: Workers, db: Engine, where: str
) -> None:
    """Killed inside the actor's transaction, the effect rolls back and the redelivery runs it;
    killed after the commit and before the ack, the redelivery finds the inbox row and skips."""
    message = workers.send("record", key="killed", hold=where)
    first = workers.start()
    wait_until(lambda: workers.started("killed"), CAP)
    workers.kill(first)
    (workers.flags / "release").touch()

    workers.start()
    inbox = Inbox(db)
    wait_until(lambda: inbox.counts().done == 1 and effect_count(db, "killed") == 1, CAP)
    expected = InboxCounts(done=1, duplicates=1 if where == "before_ack" else 0)
    wait_until(lambda: inbox.counts() == expected, CAP)  # the redelivery arrived and was absorbed
    assert effect_count(db, "killed") == 1
    with db.connect() as conn:
        assert conn.scalar(select(effects.c.message_id)) == message.message_id


def test_a_job_that_always_fails_ends_in_the_dead_letter_queue_and_a_replay_runs_it_once(
    workers: Workers, db: Engine
) -> None:
    with db.begin() as conn:
        conn.execute(insert(switches).values(name="broken", fixed=False))
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    message = dramatiq.Message(
        queue_name=workers.queue,
        actor_name="flaky",
        args=(),
        kwargs={"key": "broken"},
        options={TRACE_OPTION: {"traceparent": f"00-{trace_id}-{parent_id}-01"}},
    )
    workers.send("flaky", message=message)
    workers.start()
    dead_letters = dead_letter_queues(workers.broker)
    wait_until(lambda: dead_letters.count(workers.queue) == 1, CAP)

    [dead] = dead_letters.peek(workers.queue, 10)
    assert (dead.message_id, dead.actor_name, dead.kwargs) == (message.message_id, "flaky", {"key": "broken"})
    assert dead_letters.count(workers.queue) == 1  # peeking leaves it there
    assert (workers.flags / "attempts-broken").read_text().count("attempt") == 2  # max_retries=1: 1 + 1
    assert Inbox(db).counts() == InboxCounts(done=0, duplicates=0)  # each failure rolled its row back
    failed = [span for span in workers.spans() if span["name"] == "flaky process"]
    assert [span["status"] for span in failed] == ["ERROR", "ERROR"]
    assert {(span["trace_id"], span["parent_id"], span["kind"]) for span in failed} == {
        (trace_id, parent_id, "CONSUMER")
    }
    assert failed[0]["attributes"] == {
        "messaging.system": "dramatiq",
        "messaging.message.id": message.message_id,
        "messaging.destination.name": workers.queue,
        "messaging.operation.type": "process",
    }

    with db.begin() as conn:
        conn.execute(update(switches).values(fixed=True))
    assert dead_letters.replay(workers.queue) == 1
    assert dead_letters.count(workers.queue) == 0
    wait_until(lambda: effect_count(db, "broken") == 1, CAP)
    assert Inbox(db).counts() == InboxCounts(done=1, duplicates=0)
    assert (workers.flags / "attempts-broken").read_text().count("attempt") == 3
    assert dead_letters.count(workers.queue) == 0


def _inbox_row(message_id: str, done_at: datetime) -> dict[str, Any]:
    return {"message_id": message_id, "actor_name": "a", "queue_name": "q", "done_at": done_at}


def test_prune_removes_the_rows_older_than_the_retention_only(db: Engine) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    inbox = Inbox(db, retention=timedelta(hours=1))
    old = [_inbox_row(f"old-{n}", now - timedelta(hours=2, seconds=n)) for n in range(2500)]  # > a batch
    kept = [_inbox_row("just-inside", now - timedelta(minutes=59)), _inbox_row("new", now)]
    with db.begin() as conn:
        conn.execute(insert(job_inbox_table), old + kept)

    assert inbox.prune(now) == 2500
    with db.connect() as conn:
        assert set(conn.scalars(select(job_inbox_table.c.message_id))) == {"just-inside", "new"}
    assert inbox.prune(now) == 0


@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_worker_prunes_its_inbox_while_it_runs(workers: Workers, db: Engine) -> None:
    now = datetime.now(UTC)
    with db.begin() as conn:
        conn.execute(
            insert(job_inbox_table), [_inbox_row("old", now - timedelta(hours=2)), _inbox_row("new", now)]
        )
    workers.start(retention_seconds="3600", prune_interval="0.2")

    def remaining() -> set[str]:
        with db.connect() as conn:
            return set(conn.scalars(select(job_inbox_table.c.message_id)))

    wait_until(lambda: "old" not in remaining(), CAP)
    assert remaining() == {"new"}
