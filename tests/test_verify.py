"""The checker is tested itself: a clean history passes, and every kind of violation planted in
real Kafka topics and real databases is reported — a duplicate, a lost event, a reordered key,
an aborted or rolled-back event that surfaced, a stale warehouse row.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from sqlalchemy import create_engine, insert, text

from outbox import metadata as outbox_metadata
from outbox.table import outbox_table
from runtime.kafka import KafkaSettings
from tests.processes import outboxkit
from tests.sinkkit import message, publish
from verify import Findings, VerifySettings, verify

Names = Callable[[str], str]


class Setup:
    """A topic, an app database (SQLite, outboxkit's tables) and a warehouse (DuckDB) to plant in."""

    def __init__(self, kafka: KafkaSettings, topic: str, tmp_path: Path) -> None:
        self.kafka, self.topic = kafka, topic
        self.app_url = f"sqlite:///{tmp_path / 'app.db'}"
        self.warehouse_url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
        outbox_metadata.create_all(create_engine(self.app_url))

    def event(self, offset: int, key: str, version: int, **more: object) -> Message:
        return message(self.topic, offset, key=key, version=version, event_id=f"{key}-v{version}", **more)  # type: ignore[arg-type]

    def committed(self, versions: dict[str, int]) -> None:
        with create_engine(self.app_url).begin() as conn:
            for key, version in versions.items():
                conn.execute(
                    text("INSERT INTO outbox_versions VALUES ('thing', :key, :version)"),
                    {"key": key, "version": version},
                )

    def warehouse(self, log: Sequence[str], state: dict[str, int]) -> None:
        engine = create_engine(self.warehouse_url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE log (_event_id VARCHAR)"))
            conn.execute(
                text("CREATE TABLE state (_key VARCHAR PRIMARY KEY, _version BIGINT, _deleted BOOLEAN)")
            )
            for event_id in log:
                conn.execute(text("INSERT INTO log VALUES (:id)"), {"id": event_id})
            for key, version in state.items():
                conn.execute(text("INSERT INTO state VALUES (:k, :v, FALSE)"), {"k": key, "v": version})
        engine.dispose()

    def check(self, **more: Any) -> Findings:
        return verify(
            VerifySettings(
                _env_file=None,  # type: ignore[call-arg]
                kafka=self.kafka,
                topics=[self.topic],
                app_database_url=self.app_url,
                warehouse_url=self.warehouse_url,
                log_table="log",
                state_table="state",
                **more,
            )
        )


@pytest.fixture
def setup(kafka: KafkaSettings, new_topic: Callable[..., str], tmp_path: Path) -> Setup:
    return Setup(kafka, new_topic(1), tmp_path)


def clean(setup: Setup) -> None:
    """a v1-v3 and b v1-v2, committed, published and in the warehouse: nothing wrong."""
    publish(setup.kafka, [setup.event(0, "a", 1), setup.event(1, "b", 1), setup.event(2, "a", 2)])
    publish(setup.kafka, [setup.event(3, "a", 3), setup.event(4, "b", 2)])


def test_a_clean_history_passes(setup: Setup) -> None:
    clean(setup)
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2"], {"a": 3, "b": 2})

    findings = setup.check()

    assert findings.ok, findings.render()
    assert findings.events == 5
    assert "OK: exactly once" in findings.render()


def test_named_aggregate_types_are_the_ones_checked_even_one_absent_from_kafka(setup: Setup) -> None:
    clean(setup)
    setup.committed({"a": 3, "b": 2})
    with create_engine(setup.app_url).begin() as conn:  # the app has customers too, on another topic
        conn.execute(text("INSERT INTO outbox_versions VALUES ('customer', 'c', 4)"))
    in_outbox(setup, "c", 4, aggregate_type="customer")
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2"], {"a": 3, "b": 2})

    only_things = setup.check(aggregate_types=["thing"])
    assert only_things.ok, only_things.render()
    assert only_things.pending == 0
    both = setup.check(aggregate_types=["thing", "customer"])  # customers expected on these topics
    assert both.examples["lost"] == ["customer c misses v1,2,3"]  # v4 is in the outbox


def test_a_warehouse_row_that_differs_from_the_apps_or_misses_is_reported(setup: Setup) -> None:
    clean(setup)
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2"], {"a": 3, "b": 2})
    with create_engine(setup.app_url).begin() as conn:  # the business table the events come from
        conn.execute(text("CREATE TABLE things (name VARCHAR PRIMARY KEY, n INTEGER)"))
        conn.execute(text("INSERT INTO things VALUES ('a', 1), ('b', 2), ('c', 3)"))
    with create_engine(setup.warehouse_url).begin() as conn:
        conn.execute(text("ALTER TABLE state ADD COLUMN n INTEGER"))
        conn.execute(text("UPDATE state SET n = CASE _key WHEN 'a' THEN 1 ELSE 5 END"))

    findings = setup.check(source_table="things", source_columns=["name", "n"])

    assert findings.examples["stale"] == ["things row b is (5,) in the warehouse, (2,) in the app"]
    assert findings.examples["lost"] == ["things row c is not in the warehouse"]
    assert findings.counts["phantom"] == 0


def test_a_duplicate_in_kafka_is_reported(setup: Setup) -> None:
    clean(setup)
    publish(setup.kafka, [setup.event(5, "b", 2)])  # the same event again, at a new offset
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2"], {"a": 3, "b": 2})

    findings = setup.check()

    assert findings.counts == {"lost": 0, "duplicated": 1, "reordered": 0, "phantom": 0, "stale": 0}
    assert findings.examples["duplicated"] == ["event b-v2 is in Kafka 2 times"]


def test_a_dropped_event_is_reported_lost_in_kafka_and_in_the_warehouse(setup: Setup) -> None:
    publish(setup.kafka, [setup.event(0, "a", 1), setup.event(1, "a", 2), setup.event(2, "a", 4)])
    setup.committed({"a": 4})
    setup.warehouse(["a-v1", "a-v4"], {"a": 4})

    findings = setup.check()

    assert (findings.counts["lost"], findings.ok) == (2, False)
    assert findings.examples["lost"] == [
        "thing a misses v3",
        "1 event(s) not in the warehouse log, e.g. a-v2",
    ]


def test_a_reordered_key_is_reported(setup: Setup) -> None:
    publish(setup.kafka, [setup.event(0, "a", 2), setup.event(1, "a", 1)])
    setup.committed({"a": 2})
    setup.warehouse(["a-v1", "a-v2"], {"a": 2})

    findings = setup.check()

    assert findings.counts["reordered"] == 1
    assert findings.examples["reordered"] == ["thing a v1 comes after v2"]


def test_an_aborted_event_applied_to_the_warehouse_is_a_phantom(setup: Setup, unique_name: Names) -> None:
    clean(setup)
    publish(setup.kafka, [setup.event(5, "a", 4)], transactional_id=unique_name("tx"), abort=True)
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "a-v4", "b-v1", "b-v2"], {"a": 3, "b": 2})

    findings = setup.check()

    assert findings.counts == {"lost": 0, "duplicated": 0, "reordered": 0, "phantom": 1, "stale": 0}
    assert findings.examples["phantom"] == ["event a-v4 is in the warehouse but not committed in Kafka"]


def test_a_rolled_back_event_that_reached_kafka_is_a_phantom(setup: Setup) -> None:
    clean(setup)
    publish(setup.kafka, [setup.event(5, "b", 3)])  # the app database says b ends at v2
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2", "b-v3"], {"a": 3, "b": 3})

    findings = setup.check()

    assert findings.counts["phantom"] == 1
    assert findings.examples["phantom"] == ["thing b v3 above the committed v2"]


def test_a_stale_warehouse_row_is_reported(setup: Setup) -> None:
    clean(setup)
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2"], {"a": 2, "b": 2})

    findings = setup.check()

    assert findings.counts["stale"] == 1
    assert findings.examples["stale"] == ["key a holds v2, its newest event is v3"]


def in_outbox(setup: Setup, key: str, version: int, aggregate_type: str = "thing") -> None:
    with create_engine(setup.app_url).begin() as conn:
        conn.execute(
            insert(outbox_table).values(
                event_id=f"{key}-v{version}",
                aggregatetype=aggregate_type,
                aggregateid=key,
                aggregateversion=version,
                type="ThingUpdated",
                topic=setup.topic,
                key=key,
                payload="{}",
            )
        )


def test_an_event_still_in_the_outbox_is_pending_not_lost(setup: Setup) -> None:
    clean(setup)
    setup.committed({"a": 4, "b": 2})
    in_outbox(setup, "a", 4)
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1", "b-v2"], {"a": 3, "b": 2})

    findings = setup.check()

    assert findings.ok, findings.render()
    assert findings.pending == 1
    in_outbox(setup, "a", 3)  # published, and not deleted by the cleanup yet: not pending
    assert setup.check().pending == 1


def test_outboxkit_verify_exits_non_zero_on_a_violation_and_zero_when_clean(setup: Setup) -> None:
    clean(setup)
    setup.committed({"a": 3, "b": 2})
    setup.warehouse(["a-v1", "a-v2", "a-v3", "b-v1"], {"a": 3, "b": 2})  # b-v2 never landed

    def run() -> subprocess.CompletedProcess[str]:
        env = {
            "OUTBOXKIT_VERIFY_KAFKA__BOOTSTRAP_SERVERS": setup.kafka.bootstrap_servers,
            "OUTBOXKIT_VERIFY_TOPICS": json.dumps([setup.topic]),
            "OUTBOXKIT_VERIFY_APP_DATABASE_URL": setup.app_url,
            "OUTBOXKIT_VERIFY_WAREHOUSE_URL": setup.warehouse_url,
            "OUTBOXKIT_VERIFY_LOG_TABLE": "log",
        }
        return outboxkit("verify", env=env)

    failing = run()
    assert failing.returncode == 1, failing.stderr
    assert "VIOLATIONS FOUND" in failing.stdout
    assert "lost: 1 event(s) not in the warehouse log, e.g. b-v2" in failing.stdout

    engine = create_engine(setup.warehouse_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO log VALUES ('b-v2')"))
    engine.dispose()  # DuckDB: one process holds the file
    passing = run()
    assert passing.returncode == 0, passing.stdout + passing.stderr
