"""The README's first command: `outboxkit demo`, a shop writing continuously through the whole path.

Checked independently of the demo's own verdict: the app's tables and outbox bookkeeping are read
with plain SQL and compared with the warehouse's tables.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from outboxkit.databases import drop_database, server
from runtime.kafka import KafkaSettings
from tests.helpers import rows
from tests.processes import outboxkit

DEMO = [sys.executable, "-m", "outboxkit.cli", "demo"]
PROGRESS = re.compile(r"^\s+\d+s\s+[\d,]+\s+[\d,]+\s+[\d,]+")  # time, written, published, landed
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
    [(committed,)] = rows(app_url, "SELECT sum(version) FROM outbox_versions")  # dense per aggregate
    logged = rows(
        warehouse_url,
        "SELECT _event_id, _event_type FROM customer_events "
        "UNION ALL SELECT _event_id, _event_type FROM order_events",
    )
    assert len(logged) == len({event_id for event_id, _ in logged}) == committed > 100
    assert {event_type for _, event_type in logged} == KINDS
    assert rows(warehouse_url, "SELECT count(*) FROM orders WHERE _event_type = 'OrderShipped'") == [(0,)]
    assert "email" not in {name for (name,) in rows(warehouse_url, _columns("customers"))}


def _columns(table: str) -> str:
    return f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"


def test_the_demo_writes_until_ctrl_c_then_drains_and_the_warehouse_matches_the_app(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    env = os.environ | {"OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers}
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
    assert "failed checkout" in output
    assert_warehouse_matches_app(
        f"sqlite:///{tmp_path / 'app.db'}", f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    )


@pytest.fixture
def demo_databases(pg_database: str) -> Iterator[tuple[str, str]]:
    names = (f"demo_{uuid.uuid4().hex[:8]}_app", f"demo_{uuid.uuid4().hex[:8]}_warehouse")
    yield names
    for name in names:
        drop_database(server(pg_database), name)


def test_the_demo_runs_on_postgresql_as_app_database_and_as_warehouse(
    kafka: KafkaSettings, pg_database: str, demo_databases: tuple[str, str]
) -> None:
    env = {
        "OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
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
