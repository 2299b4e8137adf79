"""The README's first command: `outboxkit demo`, a shop writing continuously through the whole path.

Checked independently of the demo's own verdict: the app's tables and outbox bookkeeping are read
with plain SQL and compared with the warehouse's tables, and the jobs the app committed with the
confirmations (and inbox rows) in the e-mail service's own database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from outboxkit.databases import drop_database, server
from runtime.kafka import KafkaSettings
from runtime.process import alive
from tests.helpers import rows
from tests.processes import outboxkit

DEMO = [sys.executable, "-m", "outboxkit.cli", "demo"]
PROGRESS = re.compile(r"^\s+\d+s\s+[\d,]+\s+[\d,]+\s+[\d,]+")  # time, written, published, landed
JOBS = re.compile(
    r"enqueued \(committed\) ([\d,]+), executed ([\d,]+), executed twice 0 \(must be 0\), missing 0\n"
    r"  duplicates absorbed by the worker's inbox: \d+\n"
    r"  rolled back: ([\d,]+) job\(s\) of failed checkouts; run: 0 \(must be 0\)"
)
KINDS = {
    "CustomerCreated",
    "CustomerUpdated",
    "OrderPlaced",
    "OrderUpdated",
    "OrderShipped",
    "OrderCancelled",
}
COMPARED = {"customers": "id, name, tier", "orders": "id, customer_id, amount_cents, status"}


def assert_warehouse_matches_app(app_url: str, warehouse_url: str) -> None:
    """What a user would check by hand: same business rows, every committed event once."""
    for table, columns in COMPARED.items():
        held = rows(warehouse_url, f"SELECT {columns} FROM {table} WHERE NOT coalesce(_deleted, FALSE)")
        assert sorted(held) == sorted(rows(app_url, f"SELECT {columns} FROM {table}")), table
    [(committed,)] = rows(  # dense per aggregate; a job is an aggregate of its own, not an event here
        app_url, "SELECT sum(version) FROM outbox_versions WHERE aggregatetype <> 'job'"
    )
    logged = rows(
        warehouse_url,
        "SELECT _event_id, _event_type FROM customer_events "
        "UNION ALL SELECT _event_id, _event_type FROM order_events",
    )
    assert len(logged) == len({event_id for event_id, _ in logged}) == committed > 100
    assert {event_type for _, event_type in logged} == KINDS
    assert rows(warehouse_url, "SELECT count(*) FROM orders WHERE _event_type = 'OrderShipped'") == [(0,)]
    assert "email" not in {name for (name,) in rows(warehouse_url, _columns("customers"))}


def assert_every_committed_job_ran_once(app_url: str, worker_url: str, output: str) -> None:
    """The e-mail service's database against the app's: one confirmation per committed job, each
    through the inbox (its row there), nothing else; and the demo's jobs lines say the same."""
    jobs = "SELECT aggregateid FROM outbox_versions WHERE aggregatetype = 'job'"
    committed = {job for (job,) in rows(app_url, jobs)}
    sent = rows(worker_url, "SELECT message_id, count(*) FROM confirmations GROUP BY message_id")
    assert len(committed) > 50
    assert dict(sent) == dict.fromkeys(committed, 1)  # none missing, none twice, none never committed
    inbox = {job for (job,) in rows(worker_url, "SELECT message_id FROM outbox_job_inbox")}
    assert inbox == committed  # each effect committed with its inbox row: the inbox was not bypassed
    found = JOBS.search(output)
    assert found is not None, output
    enqueued, executed, rolled_back = (int(n.replace(",", "")) for n in found.groups())
    assert enqueued == executed == len(committed)
    assert rolled_back > 0  # failed checkouts enqueued jobs, and none ran (checked above: none extra)


def _columns(table: str) -> str:
    return f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"


def test_the_demo_writes_until_ctrl_c_then_drains_and_the_warehouse_matches_the_app(
    kafka: KafkaSettings, redis_url: str, tmp_path: Path
) -> None:
    env = os.environ | {
        "OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "OUTBOXKIT_REDIS_URL": redis_url,
    }
    demo = subprocess.Popen(
        [*DEMO, "--seconds", "0", "--rate", "250", "--workdir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines = []
    for line in demo.stdout:  # live progress: a line every 2 s while the shop writes
        lines.append(line)
        if len([seen for seen in lines if PROGRESS.match(seen)]) >= 3:
            break
    demo.send_signal(signal.SIGINT)  # Ctrl-C: stop writing, let the relay and the sink catch up
    rest, _ = demo.communicate(timeout=180)
    output = "".join(lines) + rest

    assert demo.returncode == 0, output
    assert "the shop stopped writing" in output
    assert "OK: the warehouse matches the app" in output
    assert "every committed job ran exactly once in effect, no rolled-back one ran" in output
    assert "failed checkout" in output
    app = f"sqlite:///{tmp_path / 'app.db'}"
    assert_warehouse_matches_app(app, f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    assert_every_committed_job_ran_once(app, f"sqlite:///{tmp_path / 'worker.db'}", output)


@pytest.fixture
def demo_databases(pg_database: str) -> Iterator[tuple[str, str]]:
    names = (f"demo_{uuid.uuid4().hex[:8]}_app", f"demo_{uuid.uuid4().hex[:8]}_warehouse")
    yield names
    for name in names:
        drop_database(server(pg_database), name)


def test_the_demo_runs_on_postgresql_as_app_database_and_as_warehouse(
    kafka: KafkaSettings, redis_url: str, pg_database: str, demo_databases: tuple[str, str]
) -> None:
    env = {
        "OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "OUTBOXKIT_REDIS_URL": redis_url,
        "OUTBOXKIT_DEMO_PG_URL": pg_database,
        "OUTBOXKIT_DEMO_PG_DATABASES": json.dumps(demo_databases),
    }
    result = outboxkit(
        "demo",
        "--seconds",
        "5",
        "--rate",
        "250",
        "--app-db",
        "postgres",
        "--warehouse",
        "postgres",
        env=env,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "(4 writer(s))" in result.stdout
    assert "OK: the warehouse matches the app" in result.stdout
    assert JOBS.search(result.stdout), result.stdout
    app, warehouse = (
        make_url(pg_database).set(database=name).render_as_string(False) for name in demo_databases
    )
    assert_warehouse_matches_app(app, warehouse)


def test_the_demo_without_its_postgresql_says_how_to_start_it() -> None:
    env = {"OUTBOXKIT_DEMO_PG_URL": "postgresql://outboxkit@127.0.0.1:1/nowhere"}
    result = outboxkit("demo", "--seconds", "1", "--app-db", "postgres", env=env, timeout=60)

    assert result.returncode == 1
    assert "cannot use the database at OUTBOXKIT_DEMO_PG_URL" in result.stderr
    assert "`scripts/services up` starts the local services" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_demo_without_its_redis_says_how_to_start_it() -> None:
    env = {"OUTBOXKIT_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = outboxkit("demo", "--seconds", "1", env=env, timeout=60)

    assert result.returncode == 1
    assert "the job broker does not answer" in result.stderr
    assert (
        "at OUTBOXKIT_DEMO_REDIS_URL (or OUTBOXKIT_REDIS_URL); `scripts/services up redis`" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_demo_killed_outright_leaves_no_worker_behind(
    kafka: KafkaSettings, redis_url: str, tmp_path: Path
) -> None:
    """The worker runs in a session of its own (Ctrl-C reaches the demo only), so nothing would stop
    it after a SIGKILL of the demo but its own watch of the demo's pid."""
    env = os.environ | {
        "OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "OUTBOXKIT_REDIS_URL": redis_url,
    }
    demo = subprocess.Popen(
        [*DEMO, "--seconds", "0", "--workdir", str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert demo.stdout is not None
    for line in demo.stdout:
        if PROGRESS.match(line) and not line.rstrip().endswith(" 0"):  # a job ran: the worker is up
            break
    booted = re.search(
        r"\[PID (\d+)\] \[MainThread\] \[dramatiq\.MainProcess\]", (tmp_path / "worker.log").read_text()
    )
    assert booted is not None
    worker = int(booted[1])
    demo.kill()
    demo.wait()
    deadline = time.monotonic() + 120  # a generous cap: the worker checks every second
    while alive(worker):
        assert time.monotonic() < deadline, f"the worker (pid {worker}) outlived the demo"
        time.sleep(0.2)
