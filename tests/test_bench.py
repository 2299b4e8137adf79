"""The benchmarks run, report, and refuse to report a figure their checks contradict: B1 its
tables, B2 and B3 what a read_committed consumer finds in Kafka, B4 what the warehouse holds, B6
its tables and what Redis holds.

Quick mode only: these catch a broken benchmark, they do not judge the outbox's speed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import confluent_kafka
import pytest
from sqlalchemy import Connection, delete, event
from sqlalchemy.orm import Session

from bench import b1, b2, b3, b4, b6, sinking
from bench.pg import Endpoints
from bench.report import BenchmarkError, Options
from jobs.delivery import DramatiqDelivery
from outbox import outbox_table
from relay import TransactionalPublisher
from relay.checkpoint import CheckpointRecord
from runtime.kafka import KafkaSettings
from sink.columns import Kind
from sink.loaders import PostgresLoader, Rows
from wire import Envelope
from wire.jobs import Job

ROOT = Path(__file__).resolve().parent.parent


def test_b1_quick_reports_the_outbox_as_rows_and_as_messages_with_their_ratios(
    pg_database: str, tmp_path: Path
) -> None:
    results = tmp_path / "b1.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "b1", "--quick", "--clients", "1,8", "--json", str(results)],
        cwd=ROOT,
        env={**os.environ, "OUTBOXKIT_PG_URL": pg_database},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| B1 app-transaction | 1 |" in done.stdout
    assert "| B1 app-transaction, outbox as logical messages | 1 |" in done.stdout
    assert "| >= 0.85x plain | 1 client(s), outbox as logical messages |" in done.stdout  # judged, met or not
    document = json.loads(results.read_text())
    assert [(r["benchmark"], r["clients"]) for r in document["results"]] == [
        (benchmark, clients)
        for clients in (1, 8)
        for benchmark in ("B1 app-transaction", "B1 app-transaction, outbox as logical messages")
    ]
    for result in document["results"]:
        for variant in ("baseline", "outbox"):
            assert len(result[variant]) == 1  # --quick: one repetition
            assert result[variant][0] > 0
        assert result["ratio"] == pytest.approx(result["outbox_median"] / result["baseline_median"])
    assert document["host"]["postgresql"]["server_version"]
    host = document["host"]  # the machine the figures belong to, printed and kept
    assert host["fdatasync_per_s"] > 0  # pg_test_fsync's rate: commit-bound figures follow it
    assert host["cores"] == os.cpu_count()
    assert re.fullmatch(r"\d+\.\d+\.\d+", host["kafka_local_build"])  # what scripts/services runs
    assert f"fdatasync {host['fdatasync_per_s']}/s" in done.stdout

    plotted = subprocess.run(
        [sys.executable, "-m", "bench", "plot", "--results", str(tmp_path), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG")  # drawn from the results file


@pytest.fixture
def outbox_losing_its_rows() -> Iterator[None]:
    """Every commit deletes the outbox rows its transaction wrote: an outbox that emits nothing."""

    def lose(session: Session) -> None:
        session.execute(delete(outbox_table))

    event.listen(Session, "before_commit", lose)
    yield
    event.remove(Session, "before_commit", lose)


@pytest.mark.usefixtures("outbox_losing_its_rows")
def test_b1_refuses_a_figure_when_the_outbox_wrote_no_rows(pg_database: str) -> None:
    with pytest.raises(BenchmarkError, match="outbox grew by 0 instead of"):
        b1.run(pg_database, Options(seconds=0.2, reps=1, clients=(1,), quick=True))


def _run_quick(
    benchmark: str, results: Path, pg_database: str, kafka: KafkaSettings, redis_url: str | None = None
) -> str:
    """`python -m bench <benchmark> --quick` against the test services; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", benchmark, "--quick", "--json", str(results)],
        cwd=ROOT,
        env={
            **os.environ,
            "OUTBOXKIT_PG_URL": pg_database,
            "OUTBOXKIT_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
            **({"OUTBOXKIT_REDIS_URL": redis_url} if redis_url else {}),
        },
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_b2_quick_drains_with_all_three_variants_and_both_captures_and_reports_ratios(
    pg_database: str, kafka: KafkaSettings, tmp_path: Path
) -> None:
    results = tmp_path / "b2.json"
    stdout = _run_quick("b2", results, pg_database, kafka)
    assert "| B2 relay drain | poll | 500 |" in stdout
    assert "| B2 relay drain | wal | 500 |" in stdout
    assert "naive: drained the oldest 500 rows of the 5,000-row backlog" in stdout
    document = json.loads(results.read_text())
    poll, wal = document["results"]
    assert (poll["capture"], wal["capture"]) == ("poll", "wal")
    for result in (poll, wal):
        assert (result["batch_size"], result["rows"], result["naive_rows"]) == (500, 5000, 500)
        for variant in ("outboxkit", "naive", "ceiling"):
            assert len(result[variant]) == 1  # --quick: one repetition
            assert result[variant][0] > 0
            assert result["cpu_per_1k"][variant][0] > 0
        assert result["vs_naive"] == pytest.approx(result["outboxkit_median"] / result["naive_median"])
        assert result["vs_ceiling"] == pytest.approx(result["outboxkit_median"] / result["ceiling_median"])
    assert poll["naive"] == wal["naive"]  # one naive and one ceiling measurement serve both captures
    assert [(goal["goal"], goal["where"]) for goal in document["goals"]][-1] == (
        "wal >= polling's rate",
        "batch size 500 (default)",
    )
    assert [goal["where"] for goal in document["goals"]][:-1] == [
        *["poll, batch size 500 (default)"] * 3,
        *["wal, batch size 500 (default)"] * 3,
    ]
    assert document["host"]["kafka"]["librdkafka"] == confluent_kafka.libversion()[0]
    assert document["host"]["kafka"]["bootstrap_servers"] == kafka.bootstrap_servers


@pytest.fixture
def relay_publishing_its_first_batch_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay that is not exactly-once: its first batch goes out again in a second transaction."""
    publish = TransactionalPublisher.publish
    calls = 0

    def twice(
        self: TransactionalPublisher, envelopes: Sequence[Envelope], checkpoint: CheckpointRecord
    ) -> None:
        nonlocal calls
        calls += 1
        publish(self, envelopes, checkpoint)
        if calls == 1:
            publish(self, envelopes, checkpoint)

    monkeypatch.setattr(TransactionalPublisher, "publish", twice)


@pytest.mark.usefixtures("relay_publishing_its_first_batch_twice")
def test_b2_refuses_a_figure_when_the_topic_holds_duplicates(pg_database: str, kafka: KafkaSettings) -> None:
    options = Options(
        seconds=1, reps=1, clients=(1,), quick=True, rows=1000, naive_rows=20, batch_sizes=(200,)
    )
    with pytest.raises(BenchmarkError, match=r"outboxkit/200: .* 1200 committed records for 1000 events"):
        b2.run(Endpoints(pg_url=pg_database, kafka_bootstrap=kafka.bootstrap_servers), options)


def test_b3_quick_reports_latency_percentiles_for_both_poll_intervals_and_captures(
    pg_database: str, kafka: KafkaSettings, tmp_path: Path
) -> None:
    results = tmp_path / "b3.json"
    stdout = _run_quick("b3", results, pg_database, kafka)
    assert "| commit -> visible p99 |" in stdout
    assert "| wal, poll 0.5 s | wal / poll |" in stdout
    document = json.loads(results.read_text())
    assert [(r["capture"], r["poll_interval"], r["offered"]) for r in document["results"]] == [
        ("poll", 0.5, 200),
        ("poll", 0.02, 200),
        ("wal", 0.5, 200),
        ("wal", 0.02, 200),
    ]
    assert "Highest sustainable offered rate" in stdout
    for result in document["results"]:
        [run] = result["runs"]  # --quick: one repetition of 200 events/s for 2 s
        assert run["events"] == 400
        assert 0 < run["achieved"] <= 1.1 * run["offered"]
        assert 0 < run["commit_p50"] <= run["commit_p95"] <= run["commit_p99"] <= run["commit_max"]
    goals = [(goal["goal"], goal["where"]) for goal in document["goals"]]  # wal: 100 ms and its 50 ms
    assert goals == [
        ("p99 commit -> visible <= 100 ms at 1,000 events/s", "poll 0.5 s"),
        ("p99 commit -> visible <= 100 ms at 1,000 events/s", "poll 0.02 s"),
        ("p99 commit -> visible <= 100 ms at 1,000 events/s", "wal, poll 0.5 s"),
        ("p99 commit -> visible <= 50 ms at 1,000 events/s", "wal, poll 0.5 s"),
        ("p99 commit -> visible <= 100 ms at 1,000 events/s", "wal, poll 0.02 s"),
        ("p99 commit -> visible <= 50 ms at 1,000 events/s", "wal, poll 0.02 s"),
    ]
    assert "wal / poll" in document["goals"][2]["measured"]
    assert document["host"]["kafka"]["librdkafka"] == confluent_kafka.libversion()[0]


@pytest.mark.usefixtures("relay_publishing_its_first_batch_twice")
def test_b3_refuses_figures_when_an_event_arrives_twice(pg_database: str, kafka: KafkaSettings) -> None:
    options = Options(1, 1, (1,), quick=True, rates=(50,), poll_intervals=(0.02,))
    with pytest.raises(BenchmarkError, match=r"B3: .* duplicated"):
        b3.run(Endpoints(pg_url=pg_database, kafka_bootstrap=kafka.bootstrap_servers), options)


def test_b4_quick_sinks_into_both_warehouses_with_all_three_variants_and_checks_them(
    pg_database: str, kafka: KafkaSettings, tmp_path: Path
) -> None:
    results = tmp_path / "b4.json"
    stdout = _run_quick("b4", results, pg_database, kafka)
    assert "| B4 sink | PostgreSQL | 90 % | 5,000 |" in stdout
    assert "| B4 sink | DuckDB | 90 % | 5,000 |" in stdout
    assert "naive: upserted and committed the first 500 of the 5,000 events one at a time" in stdout
    document = json.loads(results.read_text())
    assert [r["warehouse"] for r in document["results"]] == ["postgresql", "duckdb"]
    for result in document["results"]:
        assert (result["batch_size"], result["rows"], result["naive_rows"], result["aggregates"]) == (
            5000,
            5000,
            500,
            500,
        )
        for variant in ("outboxkit", "naive", "ceiling"):
            assert len(result[variant]) == 1  # --quick: one repetition
            assert result[variant][0] > 0
            assert result["cpu_per_1k"][variant][0] > 0
        # The checks ran, and found what they must: every key once at its newest version, every
        # event's row in the ceiling's table, the newest of each key the naive consumer saw.
        assert result["verified"]["outboxkit"] == [500]
        assert result["verified"]["ceiling"] == [5000]
        assert 0 < result["verified"]["naive"][0] <= 500
        assert result["vs_naive"] == pytest.approx(result["outboxkit_median"] / result["naive_median"])
        assert result["vs_ceiling"] == pytest.approx(result["outboxkit_median"] / result["ceiling_median"])
    assert [goal["where"] for goal in document["goals"]] == [
        *["PostgreSQL, 90 % key conflicts, batch size 5,000 (default)"] * 3,
        *["DuckDB, 90 % key conflicts, batch size 5,000 (default)"] * 3,
    ]
    assert document["host"]["kafka"]["librdkafka"] == confluent_kafka.libversion()[0]


def test_b4_measures_each_share_of_key_conflicts_on_its_own_input(
    pg_database: str, kafka: KafkaSettings
) -> None:
    options = Options(
        seconds=1, reps=1, clients=(1,), quick=True, rows=1000, naive_rows=20, conflicts=(0, 50)
    )

    report = b4.run(Endpoints(pg_url=pg_database, kafka_bootstrap=kafka.bootstrap_servers), options)

    shapes = [(r.warehouse, r.conflicts, r.aggregates, r.verified["outboxkit"]) for r in report.results]
    assert shapes == [  # one row per key at its newest version, checked, for every share
        ("postgresql", 0, 1000, (1000,)),
        ("duckdb", 0, 1000, (1000,)),
        ("postgresql", 50, 500, (500,)),
        ("duckdb", 50, 500, (500,)),
    ]


@pytest.fixture
def copy_losing_its_last_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sink that is not exactly-once: the last row of each bulk load into the target table is
    lost, while the batch commits and its offsets move on."""
    load = PostgresLoader.load

    def lossy(
        self: PostgresLoader, conn: Connection, table: str, columns: Mapping[str, Kind], rows: Rows
    ) -> None:
        load(self, conn, table, columns, rows[:-1] if table == sinking.TABLE else rows)

    monkeypatch.setattr(PostgresLoader, "load", lossy)


@pytest.mark.usefixtures("copy_losing_its_last_row")
def test_b4_refuses_a_figure_when_the_table_misses_a_key(pg_database: str, kafka: KafkaSettings) -> None:
    options = Options(seconds=1, reps=1, clients=(1,), quick=True, rows=1000, naive_rows=20)
    with pytest.raises(BenchmarkError, match=r"B4 outboxkit/postgresql: .* for 100 keys \([1-9]\d* missing"):
        b4.run(Endpoints(pg_url=pg_database, kafka_bootstrap=kafka.bootstrap_servers), options)


def test_b5_quick_runs_the_whole_pipeline_as_processes_and_splits_its_cpu(
    pg_database: str, kafka: KafkaSettings, tmp_path: Path
) -> None:
    results = tmp_path / "b5.json"
    stdout = _run_quick("b5", results, pg_database, kafka)
    assert "| B5 pipeline, 200 events/s offered" in stdout
    [result] = json.loads(results.read_text())["results"]
    [run] = result["runs"]  # --quick: one repetition of 200 events/s for 2 s, all of them landed
    assert run["events"] == 400
    for component in ("writers", "relay", "sink", "postgresql"):  # each measured, each did work
        assert run["cpu"][component] > 0, component
    external = "OUTBOXKIT_KAFKA_BOOTSTRAP" in os.environ  # a broker that is not the local service
    assert (run["cpu"]["kafka"] is None) == external


def test_b6_quick_measures_both_parts_and_reports_ratios_and_goals(
    pg_database: str, kafka: KafkaSettings, redis_url: str, tmp_path: Path
) -> None:
    results = tmp_path / "b6.json"
    stdout = _run_quick("b6", results, pg_database, kafka, redis_url)
    assert "| B6 app transaction + job | 1 |" in stdout
    assert "| B6 jobs outbox -> Redis | 2,000 |" in stdout
    document = json.loads(results.read_text())
    app_1, app_8, drain = document["results"]
    assert (app_1["clients"], app_8["clients"]) == (1, 8)
    for app in (app_1, app_8):
        assert len(app["baseline"]) == len(app["outbox"]) == 1  # --quick: one repetition
        assert app["ratio"] == pytest.approx(app["outbox_median"] / app["baseline_median"])
    assert drain["jobs"] == 2000
    assert len(drain["outboxkit"]) == len(drain["ceiling"]) == 1
    assert drain["vs_ceiling"] == pytest.approx(drain["outboxkit_median"] / drain["ceiling_median"])
    assert all(drain["cpu_per_1k"][variant][0] > 0 for variant in ("outboxkit", "ceiling"))
    assert [goal["where"] for goal in document["goals"]] == ["1 client(s)", "8 client(s)", "2,000 jobs"]


@pytest.mark.usefixtures("outbox_losing_its_rows")
def test_b6_refuses_a_figure_when_enqueue_wrote_no_outbox_rows(
    pg_database: str, kafka: KafkaSettings, redis_url: str
) -> None:
    endpoints = Endpoints(pg_url=pg_database, kafka_bootstrap=kafka.bootstrap_servers, redis_url=redis_url)
    with pytest.raises(BenchmarkError, match=r"B6 enqueue: .* 'outbox': 0"):
        b6.run(endpoints, Options(seconds=0.2, reps=1, clients=(1,), quick=True, rows=100))


@pytest.fixture
def dispatcher_delivering_its_first_batch_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dispatcher whose first batch reaches the broker twice (as in a crash before its commit)."""
    deliver = DramatiqDelivery.deliver
    calls = 0

    def twice(self: DramatiqDelivery, jobs: Sequence[Job]) -> None:
        nonlocal calls
        calls += 1
        deliver(self, jobs)
        if calls == 1:
            deliver(self, jobs)

    monkeypatch.setattr(DramatiqDelivery, "deliver", twice)


@pytest.mark.usefixtures("dispatcher_delivering_its_first_batch_twice")
def test_b6_refuses_a_figure_when_the_queue_holds_a_job_twice(
    pg_database: str, kafka: KafkaSettings, redis_url: str
) -> None:
    endpoints = Endpoints(pg_url=pg_database, kafka_bootstrap=kafka.bootstrap_servers, redis_url=redis_url)
    with pytest.raises(
        BenchmarkError, match=r"B6 outboxkit: .* for 600 jobs \(\d+ missing, [1-9]\d* duplicated"
    ):
        b6.run(endpoints, Options(seconds=0.2, reps=1, clients=(1,), quick=True, rows=600))
