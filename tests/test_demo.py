"""The README's first command: `outboxkit demo` moves committed orders app -> Kafka -> DuckDB.

Checked independently of the demo's own verdict: the outbox rows in the app database are compared
with the rows in the DuckDB warehouse.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb

from outbox.kafka_settings import KafkaSettings


def test_the_demo_delivers_every_committed_event_exactly_once_and_no_rolled_back_one(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    env = os.environ | {"OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers}
    result = subprocess.run(
        [sys.executable, "-m", "outboxkit.cli", "demo", "--orders", "7", "--workdir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: all 8 committed events arrived exactly once" in result.stdout

    with sqlite3.connect(tmp_path / "app.db") as app:
        orders = {str(row[0]) for row in app.execute("select id from orders")}
        left_in_outbox = app.execute("select count(*) from outbox").fetchone()[0]
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as warehouse:
        landed = warehouse.execute("select _event_id, _event_type, _key from order_events").fetchall()
        amounts = dict(warehouse.execute("select id, amount_cents from orders").fetchall())

    assert len(orders) == 7  # the rolled-back order left no row...
    assert {key for _, _, key in landed} == orders  # ...and no event: every event is of a committed order
    assert len({event_id for event_id, _, _ in landed}) == len(landed) == 8  # each exactly once
    assert sorted(kind for _, kind, _ in landed) == ["OrderCreated"] * 7 + ["OrderUpdated"]
    assert amounts == {1: 1099, 2: 1250, 3: 1500, 4: 1750, 5: 2000, 6: 2250, 7: 2500}  # the current state
    assert left_in_outbox == 0  # published rows were cleaned up
    assert result.stdout.count("OrderCreated") == 7  # every landed event is shown to the user
    assert result.stdout.count("OrderUpdated") == 1
