"""B5, the whole pipeline at a sustained rate: where the CPU goes.

Open-loop writer processes (`bench.writers`) commit one outbox event per transaction into a
PostgreSQL app database; `outboxkit relay run` and `outboxkit sink run` run as processes of their
own, as in production, with their defaults; the sink writes every event into a PostgreSQL
warehouse table (append mode). The load runs for `seconds` at the offered rate; the measurement
ends when the warehouse holds every committed event.

CPU (user + system, from /proc) is taken per component over that window: the writers (the app's
work, the outbox write included; their start-up not), the relay, the sink, PostgreSQL (app database
and warehouse: one server; its postmaster and every backend) and Kafka (the broker's JVM, when it
is the local service `scripts/services` runs). Figures: CPU milliseconds per 1,000 events, and each
component's share of the total.

Honesty checks: the writers committed every event of the schedule, and the warehouse table holds
each exactly once (by event id); otherwise the run fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

from sqlalchemy import URL, Engine, create_engine, text
from sqlalchemy.pool import NullPool

import outbox
from bench import writers
from bench.kafka import broker_facts, run_topics
from bench.pg import Endpoints, scratch_database, server_facts_at
from bench.report import BenchmarkError, Options, Report, Table

TITLE = "whole pipeline at a sustained rate: CPU per component (writers, relay, sink, PostgreSQL, Kafka)"
NAME = "B5 pipeline"
FULL_RATE, QUICK_RATE = 1000.0, 200.0
SETTLE = 60.0  # seconds past the last commit for the warehouse to hold every event
COMPONENTS = ("writers", "relay", "sink", "postgresql", "kafka")
TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """One measurement: events, its window, CPU seconds per component (None: not measurable here)."""

    offered: float
    events: int
    seconds: float
    cpu: dict[str, float | None]

    def per_1k(self, component: str) -> float | None:
        spent = self.cpu[component]
        return None if spent is None else 1000 * 1000 * spent / self.events  # ms per 1,000 events


@dataclass(frozen=True)
class PipelineResult:
    benchmark: str
    offered: float
    runs: tuple[Run, ...]

    def median_per_1k(self, component: str) -> float | None:
        values = [value for run in self.runs if (value := run.per_1k(component)) is not None]
        return float(median(values)) if values else None

    def to_json(self) -> dict[str, object]:
        medians = {f"{c}_ms_per_1k_median": self.median_per_1k(c) for c in COMPONENTS}
        return {**asdict(self), **medians}


def run(endpoints: Endpoints, options: Options) -> Report:
    """Measure the pipeline `options.reps` times at each offered rate."""
    rates = options.rates or ((QUICK_RATE,) if options.quick else (FULL_RATE,))
    kafka = endpoints.kafka
    results = []
    with run_topics(kafka, "outboxkit-bench.b5") as topics, tempfile.TemporaryDirectory() as logs:
        for rate in rates:
            runs = []
            for _ in range(options.reps):
                with (
                    scratch_database(endpoints.pg_url) as app,
                    scratch_database(endpoints.pg_url) as warehouse,
                ):
                    topic = topics.new("b5")
                    runs.append(_measure(endpoints, app, warehouse, topic, rate, options.seconds, Path(logs)))
            results.append(PipelineResult(NAME, rate, tuple(runs)))
        return _report(results, options.seconds, server_facts_at(endpoints.pg_url), broker_facts(kafka))


def _measure(  # noqa: PLR0917 - one measurement's whole setting
    endpoints: Endpoints, app: URL, warehouse: URL, topic: str, rate: float, seconds: float, logs: Path
) -> Run:
    app_url, warehouse_url = (url.render_as_string(hide_password=False) for url in (app, warehouse))
    engine = create_engine(app_url, poolclass=NullPool)
    try:
        outbox.metadata.create_all(engine)
        server = _postmaster(engine)
    finally:
        engine.dispose()
    events = max(1, round(rate * seconds))
    name = f"bench-b5-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        relay = stack.enter_context(_service("relay", _relay_env(endpoints, app_url, name), logs))
        sink = stack.enter_context(_service("sink", _sink_env(endpoints, warehouse_url, topic, name), logs))
        pids = {"relay": [relay], "sink": [sink], "postgresql": server, "kafka": _kafka_pid(endpoints)}
        before = {component: _cpu(found) for component, found in pids.items()}
        sent, writers_cpu = writers.write_all(app_url, topic, rate, events)
        _wait_landed(warehouse_url, len(sent), time.monotonic() + SETTLE)
        window = time.monotonic() - min((s.due for s in sent), default=time.monotonic())
        after = {component: _cpu(found) for component, found in pids.items()}
    if sorted(s.seq for s in sent) != list(range(events)):
        raise BenchmarkError(f"B5: the writers committed {len(sent)} events of the {events} scheduled")
    _check_landed(warehouse_url, events)
    cpu: dict[str, float | None] = {"writers": writers_cpu}
    for component in pids:
        spent_before, spent_after = before[component], after[component]
        cpu[component] = None if spent_before is None or spent_after is None else spent_after - spent_before
    return Run(rate, events, window, cpu)


def _relay_env(endpoints: Endpoints, app_url: str, name: str) -> dict[str, str]:
    return {
        "OUTBOXKIT_RELAY_DATABASE_URL": app_url,
        "OUTBOXKIT_RELAY_SOURCE_ID": name,
        "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
        "OUTBOXKIT_RELAY_HTTP_PORT": str(_free_port()),
    }


def _sink_env(endpoints: Endpoints, warehouse_url: str, topic: str, name: str) -> dict[str, str]:
    return {
        "OUTBOXKIT_SINK_WAREHOUSE_URL": warehouse_url,
        "OUTBOXKIT_SINK_GROUP_ID": name,
        "OUTBOXKIT_SINK_TABLES": json.dumps([{"topic": topic, "table": "pings", "mode": "append"}]),
        "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
        "OUTBOXKIT_SINK_HTTP_PORT": str(_free_port()),
    }


@contextmanager
def _service(role: str, env: dict[str, str], logs: Path) -> Iterator[int]:
    """`outboxkit <role> run` as a process, ready (its /readyz answers 200) before it is yielded."""
    log = (logs / f"{role}-{uuid.uuid4().hex[:6]}.log").open("w")
    command = [sys.executable, "-m", "outboxkit.cli", "--log-level", "WARNING", role, "run"]
    process = subprocess.Popen(  # noqa: S603 - our own command line
        command, env=os.environ | env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    port = env[f"OUTBOXKIT_{role.upper()}_HTTP_PORT"]
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}/readyz", log.name)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"B5: {url} exited with {process.returncode} before it was ready; see {log}")
        with suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - loopback
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise BenchmarkError(f"B5: {url} was not ready within 60 s; see {log}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_landed(url: str, events: int, deadline: float) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        while time.monotonic() < deadline:
            with suppress(Exception), engine.connect() as conn:  # the table appears with the first batch
                if conn.execute(text("SELECT count(*) FROM pings")).scalar_one() >= events:
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()


def _check_landed(url: str, events: int) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows, ids = conn.execute(text("SELECT count(*), count(DISTINCT _event_id) FROM pings")).one()
    finally:
        engine.dispose()
    if rows != events or ids != events:
        raise BenchmarkError(
            f"B5: the warehouse holds {rows} rows ({ids} distinct events) for {events} committed events"
        )


def _postmaster(engine: Engine) -> list[int] | None:
    """The PostgreSQL server's main process, if it runs on this machine (a backend's parent)."""
    with engine.connect() as conn:  # the backend is read while it lives: closed, it exits at once
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        stat = _stat(backend)
    return None if stat is None else [int(stat[1])]


def _kafka_pid(endpoints: Endpoints) -> list[int] | None:
    """The broker's JVM when it is the local service (its pid file, checked against its command)."""
    pidfile = endpoints.state_dir / "kafka" / "pid"
    with suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if b"kafka" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return [pid]
    return None


def _cpu(pids: list[int] | None) -> float | None:
    """CPU seconds (user + system) of the processes, their reaped children, and — for a server —
    its live children (PostgreSQL's backends)."""
    if pids is None:
        return None
    total = 0.0
    for pid in pids:
        stat = _stat(pid)
        if stat is None:
            return None
        total += sum(int(value) for value in stat[11:15]) / TICKS  # utime stime cutime cstime
        total += sum(_own(child) for child in _children(pid))
    return total


def _own(pid: int) -> float:
    stat = _stat(pid)
    return 0.0 if stat is None else sum(int(value) for value in stat[11:13]) / TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ..., utime (11), stime, cutime, cstime]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _report(
    results: list[PipelineResult], seconds: float, server: dict[str, str], kafka: dict[str, str]
) -> Report:
    tables = [_table(result) for result in results]
    notes = [
        f"Offered for {seconds:g} s per repetition by open-loop writer processes (one event per "
        "transaction); `outboxkit relay run` and `outboxkit sink run` as processes with their defaults; "
        "the sink appends every event to a PostgreSQL table. The window runs from the first event's "
        "due time to the warehouse holding every event; the other components' CPU is taken from just "
        "before the writers start (their start-up falls in it). CPU is user + system from /proc "
        "(PostgreSQL: its postmaster and every backend, app database and warehouse together; Kafka: "
        "the local broker's JVM, n/a for another broker). Cells: median over the repetitions "
        "(min-max).",
    ]
    return Report(results, server, kafka, tables=tables, notes=notes)


def _table(result: PipelineResult) -> Table:
    totals = [sum(v for v in (run.per_1k(c) for c in COMPONENTS) if v is not None) for run in result.runs]
    rows = []
    for component in COMPONENTS:
        values = [value for run in result.runs if (value := run.per_1k(component)) is not None]
        shares = [
            100 * value / total
            for run, total in zip(result.runs, totals, strict=True)
            if (value := run.per_1k(component)) is not None
        ]
        rows.append(
            (component, *_cells(values, "ms"), *_cells(shares, "%"))
            if values
            else (component, "n/a", "n/a", "n/a", "n/a")
        )
    window = median(run.events / run.seconds for run in result.runs)
    return Table(
        (
            f"{NAME}, {result.offered:,.0f} events/s offered ({window:,.0f}/s end to end)",
            "CPU per 1,000 events",
            "min-max",
            "share of the CPU",
            "min-max",
        ),
        "lrrrr",
        tuple(rows),
    )


def _cells(values: list[float], unit: str) -> tuple[str, str]:
    return f"{median(values):,.0f} {unit}", f"{min(values):,.0f}-{max(values):,.0f}"
