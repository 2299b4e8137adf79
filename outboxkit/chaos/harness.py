"""The chaos run: workload + relays + sinks + faults for a while, then heal, drain and check.

Everything runs for real: the application database and the warehouse are fresh PostgreSQL
databases, the relays and sinks are `outboxkit` processes, Kafka is the broker the services run.
The verdict comes from `verify`, which reads Kafka and both databases on its own.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from outbox import OutboxSettings, schema
from outboxkit.chaos.faults import Fleet, Injector, Restart
from outboxkit.chaos.processes import Proc
from outboxkit.chaos.workload import Account, Base, Mix, Workload
from outboxkit.databases import committed_events, create_database, drop_database, server
from outboxkit.writers import FAILED
from relay.capture import CaptureMode
from relay.capture.slots import slot_name
from relay.shards import Shard
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings
from verify import Findings, VerifySettings, verify
from verify.errors import VerifyError

PAUSE = 5.0  # seconds a paused relay sleeps: past its lease timeout (3 s) and its transaction timeout
SHARDS = 2  # of the outbox: relays split it, and a relay taking a shard over is a fault of its own
SLOTS_TIMEOUT = 120.0  # seconds the relays may take to make their replication slots (capture=wal)


class ChaosSettings(BaseSettings):
    """How long, how much, how often something breaks (`OUTBOXKIT_CHAOS_*`, or the command's flags)."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_CHAOS_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    pg_url: str = "postgresql+psycopg://outboxkit@127.0.0.1:55432/outboxkit"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    capture: CaptureMode = "poll"  # how the relays read the outbox (OUTBOXKIT_RELAY_CAPTURE)
    seconds: float = 170.0  # at most; the run ends sooner once the targets below are reached
    events: int = 50_000  # committed events to reach (0: run the full `seconds`)
    faults: int = 20  # faults to reach...
    fault_kinds: int = 6  # ...of this many kinds (6 without service restarts, 8 with; each comes once first)
    mix: Mix = Mix(rate=520.0, writers=8)  # what the workload offers: rate, writers, kinds of work
    fault_every: float = 5.5
    relays: int = 2
    sinks: int = 2
    partitions: int = 4
    seed: int = 1
    drain_timeout: float = 180.0


@dataclass
class ChaosReport:
    run: str
    seconds: float
    faults: Counter[str]
    transactions: Counter[str]  # by kind; "failed": refused by the database
    unasked_exits: list[str]
    findings: Findings
    logs: Path
    load: Load
    timeline: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.findings.ok

    def render(self) -> str:
        faults = ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items()))
        done = {kind: count for kind, count in self.transactions.items() if kind != FAILED}
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(done.items()))
        failed = f"{self.transactions[FAILED]} failed (a conflict, or the database away)"
        return "\n".join(
            [
                f"chaos run {self.run}: {self.seconds:.0f} s, {sum(self.faults.values())} faults ({faults})",
                f"  transactions: {kinds}; {failed}",
                f"  processes that exited on their own (restarted): {len(self.unasked_exits)}"
                + (f" — {', '.join(self.unasked_exits[:6])}" if self.unasked_exits else ""),
                self.findings.render(),
                f"  {self.load}",
                f"  logs: {self.logs}",
            ]
        )


@dataclass(frozen=True)
class Load:
    """How much the workload got done under the faults: throughput, apart from the verdict."""

    committed: int  # events the workload committed (all of them ran under faults)
    seconds: float
    offered: float  # events/s the workload offered
    reached: bool  # the event and fault targets were met before the time ran out

    def __str__(self) -> str:
        rate = self.committed / self.seconds if self.seconds else 0.0
        targets = "targets met" if self.reached else "targets NOT met: the time ran out first"
        return (
            f"load: {self.committed} events committed in {self.seconds:.0f} s under faults, {rate:.0f}/s "
            f"(offered {self.offered:.0f}/s); {targets}"
        )


@dataclass(frozen=True)
class Stage:
    """One run's resources: its id, topic, databases and log directory."""

    run: str
    topic: str
    app_url: str
    warehouse_url: str
    logs: Path


def run_chaos(
    settings: ChaosSettings, restart: Restart | None = None, log: Callable[[str], None] = print
) -> ChaosReport:
    run, started = uuid.uuid4().hex[:8], time.monotonic()
    with _databases(settings.pg_url, run) as (app_url, warehouse_url):
        stage = Stage(
            run,
            f"chaos.{run}.account",
            app_url,
            warehouse_url,
            Path(tempfile.mkdtemp(prefix=f"outboxkit-chaos-{run}-")),
        )
        ensure_topic(settings.kafka, stage.topic, partitions=settings.partitions)
        fleet = _fleet(settings, stage)
        workload_engine = create_engine(app_url, pool_size=settings.mix.writers + 2, pool_pre_ping=True)
        workload = Workload(
            workload_engine,
            OutboxSettings(topic_template=f"chaos.{run}.{{aggregate_type}}"),
            settings.mix,
            settings.seed,
        )
        injector = Injector(fleet, random.Random(settings.seed), pause_seconds=PAUSE, restart=restart)
        exits: list[str] = []
        try:
            for proc in fleet.all():
                proc.start()
            if settings.capture == "wal":
                _slots_made(workload_engine, stage, log)
            workload.start()
            loaded = time.monotonic()
            reached = _inject(
                settings,
                injector,
                fleet,
                exits=exits,
                committed=lambda: committed_events(workload_engine) or 0,
                log=log,
            )
            workload.stop()
            loaded = time.monotonic() - loaded
            exits += fleet.heal(resume=True)
            findings = _drained(settings, stage, log)
        finally:
            workload.stop()
            for proc in fleet.all():
                proc.stop(30)
            if settings.capture == "wal":
                _drop_slots(workload_engine, stage)
            workload_engine.dispose()
        return ChaosReport(
            run,
            time.monotonic() - started,
            injector.counts,
            workload.done,
            exits,
            findings,
            stage.logs,
            Load(findings.events, loaded, settings.mix.rate, reached),
        )


def _inject(
    settings: ChaosSettings,
    injector: Injector,
    fleet: Fleet,
    *,
    exits: list[str],
    committed: Callable[[], int],
    log: Callable[[str], None],
) -> bool:
    """A fault every `fault_every` seconds until the targets are reached (True) or time is up."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < settings.seconds:
        time.sleep(settings.fault_every)
        exits += fleet.heal(resume=False)
        log(f"{elapsed:6.1f}s fault: {injector.inject()}")
        faults = sum(injector.counts.values()) >= settings.faults
        kinds = len(injector.counts) >= settings.fault_kinds
        if faults and kinds and settings.events and committed() >= settings.events:
            return True
    return not settings.events  # a run for the full time (events 0) has no targets to miss


def _drained(settings: ChaosSettings, stage: Stage, log: Callable[[str], None]) -> Findings:
    """Check until everything committed has landed (or the drain timeout passes): the last check counts."""
    check = VerifySettings(
        _env_file=None,
        kafka=settings.kafka,
        topics=[stage.topic],
        app_database_url=SecretStr(stage.app_url),
        warehouse_url=SecretStr(stage.warehouse_url),
        log_table="log",
        state_table="state",
        source_table=Account.__tablename__,  # final state: the app's accounts, column by column
        source_columns=["id", "owner", "balance"],
    )
    deadline = time.monotonic() + settings.drain_timeout
    while True:
        try:
            findings = verify(check)
        except (VerifyError, SQLAlchemyError) as exc:  # a service the last fault restarted, settling
            if time.monotonic() > deadline:
                raise
            log(f"draining: cannot check yet ({str(exc).splitlines()[0]})")
        else:
            if (findings.ok and not findings.pending) or time.monotonic() > deadline:
                return findings
            log(f"draining: {findings.pending} pending, {findings.counts}")
        time.sleep(3)


def _source_id(stage: Stage) -> str:
    return f"chaos-{stage.run}"


def _slots_made(engine: Engine, stage: Stage, log: Callable[[str], None]) -> None:
    """Wait until the relays have made every shard's replication slot: a slot sees only rows
    committed after it was made, so the workload must not write before."""
    names = [slot_name(_source_id(stage), Shard(index, SHARDS)) for index in range(SHARDS)]
    query = text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY(:names)")
    deadline = time.monotonic() + SLOTS_TIMEOUT
    while True:
        with engine.connect() as conn:
            if conn.execute(query, {"names": names}).scalar_one() == SHARDS:
                log(f"replication slots made: {', '.join(names)}")
                return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the relays made no replication slots {names} within {SLOTS_TIMEOUT:.0f} s: "
                f"see their logs in {stage.logs}"
            )
        time.sleep(0.2)


def _drop_slots(engine: Engine, stage: Stage) -> None:
    """Drop the run's replication slots (and publications): a slot pins WAL for as long as it
    exists, and PostgreSQL drops no database that still has one."""
    from relay.capture.wal import drop_slot  # noqa: PLC0415 - psycopg2 (the `wal` extra) for wal runs only

    for index in range(SHARDS):
        drop_slot(engine, _source_id(stage), Shard(index, SHARDS))


def _fleet(settings: ChaosSettings, stage: Stage) -> Fleet:
    run, topic = stage.run, stage.topic
    relay_env = {
        "OUTBOXKIT_RELAY_DATABASE_URL": stage.app_url,
        "OUTBOXKIT_RELAY_SOURCE_ID": _source_id(stage),
        "OUTBOXKIT_RELAY_CAPTURE": settings.capture,
        "OUTBOXKIT_RELAY_SHARDS": str(SHARDS),
        "OUTBOXKIT_RELAY_LEASE_INTERVAL": "0.5",
        "OUTBOXKIT_RELAY_LEASE_TIMEOUT": "3",
        "OUTBOXKIT_RELAY_KAFKA_TIMEOUT": "10",
        "OUTBOXKIT_RELAY_MAX_BACKOFF": "2",
        "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        # Shorter than a pause (PAUSE): a paused relay's open transaction is aborted by the broker.
        "OUTBOXKIT_RELAY_KAFKA__CONFIG": json.dumps(
            {"transaction.timeout.ms": str(int(PAUSE * 1000) - 1000)}
        ),
    }
    sink_env = {
        "OUTBOXKIT_SINK_WAREHOUSE_URL": stage.warehouse_url,
        "OUTBOXKIT_SINK_GROUP_ID": f"chaos-{run}",
        "OUTBOXKIT_SINK_TABLES": json.dumps(
            [
                {"topic": topic, "table": "log", "mode": "append"},
                {"topic": topic, "table": "state", "mode": "upsert"},
            ]
        ),
        "OUTBOXKIT_SINK_MAX_BACKOFF": "2",
        "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "OUTBOXKIT_SINK_KAFKA__CONFIG": json.dumps(
            {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
        ),
    }
    numbers = iter(range(1, 10_000))

    def spawn(role: str) -> Proc:
        return Proc(role, relay_env if role == "relay" else sink_env, stage.logs, next(numbers))

    return Fleet(
        [spawn("relay") for _ in range(settings.relays)],
        [spawn("sink") for _ in range(settings.sinks)],
        spawn,
    )


@contextmanager
def _databases(pg_url: str, run: str) -> Iterator[tuple[str, str]]:
    """A fresh application database (outbox tables, accounts) and a fresh warehouse, dropped after."""
    names = (f"chaos_{run}_app", f"chaos_{run}_warehouse")
    at = server(pg_url)
    try:
        app_url, warehouse_url = (create_database(at, name) for name in names)
        app = create_engine(app_url)
        schema.upgrade(app)
        Base.metadata.create_all(app)
        app.dispose()
        yield app_url, warehouse_url
    finally:
        for name in names:
            drop_database(at, name)
