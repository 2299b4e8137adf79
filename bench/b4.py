"""B4, sink throughput: how fast outboxkit's sink moves a backlog of events from Kafka into a
warehouse, PostgreSQL and DuckDB.

A sink that was away, or a new table replayed from the start of a topic, meets a backlog; how fast
it catches up decides how stale the warehouse gets. Once per run, N events (`bench.stream`: keys
over up to 20,000 aggregates, ~10 increasing versions each, a few flat payload fields) go to a
fresh 4-partition topic. Each measurement then reads that topic from the start, in a fresh
consumer group, into a fresh warehouse (a scratch PostgreSQL database, a new DuckDB file). Three
variants (`bench.sinking`) give the figure its scale: outboxkit's sink (upsert mode), the naive
consumer that upserts and commits one event at a time, and the warehouse's bulk-load ceiling (the
same rows loaded plainly: no dedupe, no offsets). Repetitions run interleaved (per warehouse: naive,
then outboxkit and ceiling at each batch size, again and again), so drift on the shared machine
falls on all variants alike.

The naive consumer needs a third of a millisecond (PostgreSQL) to several (DuckDB) per event; it
consumes the first `naive_rows` records of the same topic and its rate is quoted as that — the
tables say so.

Honesty checks, after every measurement: the table has the columns every variant writes; the
outboxkit table holds exactly one row per key, each at the key's highest version (with that
event's payload), after the sink applied every event, dead-lettered none and retried no batch (a
warehouse that went away mid-run — the machines are shared — would be in the figure otherwise);
the naive table holds the newest event it consumed of each key; the ceiling table holds one row
per event. Otherwise the run fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import duckdb

from bench import sinking
from bench.drain import Drained, Plan, Sizes
from bench.kafka import broker_facts, run_topics
from bench.pg import Endpoints, server_facts_at
from bench.report import BenchmarkError, Goal, Options, Report, Table, Targets, ThreeWay
from bench.sinking import Target
from bench.stream import COLUMNS, CONFLICTS, Stream, produce
from runtime.kafka import KafkaSettings
from sink import SinkSettings
from sink.run import tune_gc

TITLE = (
    "sink: events/s from a Kafka backlog into PostgreSQL and DuckDB, outboxkit vs naive consumer vs bulk load"
)
NAME = "B4 sink"
FULL_ROWS, QUICK_ROWS = 200_000, 5_000
DEFAULT_CONFLICTS = 90.0  # the quick run's, and the shape of earlier runs: ~10 versions per key
FULL_NAIVE_ROWS, QUICK_NAIVE_ROWS = 5_000, 500
PARTITIONS = 4
WAREHOUSES = {"postgresql": "PostgreSQL", "duckdb": "DuckDB"}
# The sink's default (OUTBOXKIT_SINK_BATCH_SIZE): the goals are judged there first.
DEFAULT_BATCH_SIZE = int(SinkSettings.model_fields["batch_size"].default)
TARGETS = Targets(rate=30_000.0, vs_naive=10.0, vs_ceiling=0.5, default_batch_size=DEFAULT_BATCH_SIZE)
SIZES = Sizes(
    FULL_ROWS, QUICK_ROWS, FULL_NAIVE_ROWS, QUICK_NAIVE_ROWS, (DEFAULT_BATCH_SIZE,), (DEFAULT_BATCH_SIZE,)
)


@dataclass(frozen=True)
class Measured:
    """One checked measurement: its timing, and how many rows the check found as they must be."""

    drained: Drained
    verified: int


@dataclass(frozen=True)
class SinkComparison(ThreeWay):
    """One warehouse at one batch size: events/s per repetition of each variant, CPU seconds per
    1,000 events, and per repetition the rows each variant's check verified."""

    benchmark: str
    warehouse: str
    warehouse_version: str
    batch_size: int
    unit: str
    rows: int
    naive_rows: int
    aggregates: int
    conflicts: float  # % of the events that update a key an earlier event created
    outboxkit: tuple[float, ...]
    naive: tuple[float, ...]
    ceiling: tuple[float, ...]
    cpu_per_1k: dict[str, tuple[float, ...]]
    verified: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), **self.summary()}


def run(endpoints: Endpoints, options: Options) -> Report:
    """Per share of key conflicts, produce the input once, then measure every variant
    `options.reps` times, interleaved."""
    plan, kafka = Plan.of(options, SIZES), endpoints.kafka
    conflicts = options.conflicts or ((DEFAULT_CONFLICTS,) if options.quick else CONFLICTS)
    tune_gc()  # as `outboxkit sink run` does; process-wide, so every variant runs with it alike
    server = server_facts_at(endpoints.pg_url)
    versions = {"postgresql": server["server_version"], "duckdb": duckdb.__version__}
    comparisons, streams = [], []
    with (
        run_topics(kafka, "outboxkit-bench.b4") as topics,
        tempfile.TemporaryDirectory(prefix="outboxkit-bench-b4-") as directory,
    ):
        for share in conflicts:
            stream = Stream.planned(topics.new("b4", partitions=PARTITIONS), plan.rows, share)
            produce(kafka, stream)
            measuring = _Run(endpoints, Path(directory), stream, plan)
            for _ in range(options.reps):
                for warehouse in WAREHOUSES:
                    measuring.repetition(warehouse)
            comparisons += [
                measuring.comparison(warehouse, versions[warehouse], size)
                for warehouse in WAREHOUSES
                for size in plan.batch_sizes
            ]
            streams.append(stream)
        return _report(comparisons, plan, streams, server, broker_facts(kafka))


class _Run:
    """One run's setting (services, scratch directory, input, plan) and its measurements by variant
    ('naive/duckdb', 'outboxkit/duckdb/5000', 'ceiling/duckdb/5000', ...)."""

    def __init__(self, endpoints: Endpoints, directory: Path, stream: Stream, plan: Plan) -> None:
        self.endpoints, self.directory, self.stream, self.plan = endpoints, directory, stream, plan
        self.samples: dict[str, list[Measured]] = {}

    def repetition(self, warehouse: str) -> None:
        """One measurement of each variant on one warehouse, each in a fresh warehouse of its own."""
        kafka, stream = self.endpoints.kafka, self.stream
        variants: list[tuple[str, Callable[[Target], Measured]]] = [
            (f"naive/{warehouse}", partial(_naive, kafka, stream, self.plan.naive_rows))
        ]
        for size in self.plan.batch_sizes:
            variants += [
                (f"outboxkit/{warehouse}/{size}", partial(_outboxkit, kafka, stream, size)),
                (f"ceiling/{warehouse}/{size}", partial(_ceiling, kafka, stream, size)),
            ]
        for variant, measure in variants:
            with sinking.fresh(warehouse, self.endpoints.pg_url, self.directory) as target:
                self.samples.setdefault(variant, []).append(measure(target))

    def comparison(self, warehouse: str, version: str, size: int) -> SinkComparison:
        variants = {
            "outboxkit": self.samples[f"outboxkit/{warehouse}/{size}"],
            "naive": self.samples[f"naive/{warehouse}"],
            "ceiling": self.samples[f"ceiling/{warehouse}/{size}"],
        }
        rates = {v: tuple(m.drained.rate for m in ms) for v, ms in variants.items()}
        return SinkComparison(
            NAME,
            warehouse,
            version,
            size,
            "events/s",
            self.plan.rows,
            self.plan.naive_rows,
            self.stream.aggregates,
            self.stream.conflicts,
            outboxkit=rates["outboxkit"],
            naive=rates["naive"],
            ceiling=rates["ceiling"],
            cpu_per_1k={v: tuple(m.drained.cpu_per_1k for m in ms) for v, ms in variants.items()},
            verified={v: tuple(m.verified for m in ms) for v, ms in variants.items()},
        )


def _outboxkit(kafka: KafkaSettings, stream: Stream, batch_size: int, target: Target) -> Measured:
    """The sink over the whole topic; refused unless it applied every event, never had to retry a
    batch, and the table holds exactly each key's newest version."""
    variant = f"B4 outboxkit/{target.dialect}"
    drained, stats = sinking.outboxkit(target, kafka, stream, batch_size)
    if stats.retries or stats.moved:
        raise BenchmarkError(
            f"{variant}: the sink retried {stats.retries} batches and re-read {stats.moved} after a "
            "partition moved: the figure would measure an outage or a rebalance, not the sink"
        )
    if stats.dead_letters or stats.applied + stats.skipped != stream.events:
        raise BenchmarkError(
            f"{variant}: the sink applied {stats.applied}, skipped {stats.skipped} and dead-lettered "
            f"{stats.dead_letters} of {stream.events} events: not every event was settled as an upsert"
        )
    return Measured(drained, _check_newest(variant, target, stream.expected()))


def _naive(kafka: KafkaSettings, stream: Stream, rows: int, target: Target) -> Measured:
    drained, newest = sinking.naive(target, kafka, stream, rows)
    return Measured(drained, _check_newest(f"B4 naive/{target.dialect}", target, newest))


def _ceiling(kafka: KafkaSettings, stream: Stream, batch_size: int, target: Target) -> Measured:
    """The bulk load; refused unless the table holds one row per event (count and sum of seq)."""
    drained = sinking.ceiling(target, kafka, stream, batch_size)
    _check_columns(f"B4 ceiling/{target.dialect}", target)
    count, total = sinking.loaded(target)
    if (count, total) != (stream.events, stream.events * (stream.events - 1) // 2):
        raise BenchmarkError(
            f"B4 ceiling/{target.dialect}: the table holds {count} rows (seq sum {total}) for "
            f"{stream.events} events, not one row per event"
        )
    return Measured(drained, count)


def _check_newest(variant: str, target: Target, expected: dict[str, tuple[int, int]]) -> int:
    """Refuse unless the table holds exactly the `expected` keys, each at its (version, seq)."""
    _check_columns(variant, target)
    found = sinking.held(target)
    if found != expected:
        missing = len(expected.keys() - found.keys())
        extra = len(found.keys() - expected.keys())
        stale = sum(1 for key, newest in expected.items() if key in found and found[key] != newest)
        raise BenchmarkError(
            f"{variant}: the table holds {len(found)} rows for {len(expected)} keys ({missing} missing, "
            f"{extra} foreign, {stale} not at the key's newest version): its rate would not measure "
            "applying the events"
        )
    return len(found)


def _check_columns(variant: str, target: Target) -> None:
    found = sinking.columns_of(target)
    if found != list(COLUMNS):
        raise BenchmarkError(
            f"{variant}: the table's columns are {found}, not {list(COLUMNS)}: the variants "
            "would not load the same rows"
        )


def _report(
    comparisons: list[SinkComparison],
    plan: Plan,
    streams: list[Stream],
    server: dict[str, str],
    kafka: dict[str, str],
) -> Report:
    shapes = "; ".join(
        f"{s.conflicts:.0f} %: {s.aggregates:,} keys, ~{plan.rows / s.aggregates:.0f} versions each"
        for s in streams
    )
    notes = [
        f"Input: {plan.rows:,} events per share of key conflicts (events that update a key an earlier "
        f"event created; {shapes}), produced once to a {PARTITIONS}-partition topic; every "
        "measurement reads it from the start in a fresh consumer group into a fresh warehouse "
        "(scratch PostgreSQL database, new DuckDB file). The clock runs from the first poll "
        "(joining the group included) to the commit of the last event. Ceiling: PostgreSQL COPY, "
        "DuckDB read_csv, into a table without a key. CPU: this process's (Python, librdkafka, "
        "DuckDB), per 1,000 events; PostgreSQL's server processes are not in it.",
    ]
    if plan.naive_sampled:
        notes.append(
            f"\\* naive: upserted and committed the first {plan.naive_rows:,} of the {plan.rows:,} events "
            f"one at a time; its rate is extrapolated to the whole backlog "
            f"({_naive_whole(comparisons)})."
        )
    return Report(
        comparisons, server, kafka, tables=[_table(comparisons)], goals=_goals(comparisons), notes=notes
    )


def _naive_whole(comparisons: list[SinkComparison]) -> str:
    """How long the naive consumer would take for the whole backlog, per warehouse and conflicts."""
    first = comparisons[0].batch_size
    return ", ".join(
        f"~{c.naive_whole()} into {WAREHOUSES[c.warehouse]} at {c.conflicts:.0f} %"
        for c in comparisons
        if c.batch_size == first
    )


def _table(comparisons: list[SinkComparison]) -> Table:
    return Table(
        ("benchmark", "warehouse", "key conflicts", "batch size", *ThreeWay.COLUMNS),
        "llrr" + ThreeWay.ALIGN,
        tuple(
            (c.benchmark, WAREHOUSES[c.warehouse], f"{c.conflicts:.0f} %", f"{c.batch_size:,}", *c.cells())
            for c in comparisons
        ),
    )


def _goals(comparisons: list[SinkComparison]) -> list[Goal]:
    """The issue's three targets for each warehouse and share of conflicts, at every batch size
    measured (default first)."""
    ordered = sorted(
        comparisons,
        key=lambda c: (list(WAREHOUSES).index(c.warehouse), -c.conflicts, *TARGETS.order(c)),
    )
    return [
        goal
        for c in ordered
        for goal in TARGETS.goals(
            c, f"{WAREHOUSES[c.warehouse]}, {c.conflicts:.0f} % key conflicts, {TARGETS.where(c)}"
        )
    ]
