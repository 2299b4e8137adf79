"""B2, relay drain: how fast outboxkit's relay empties a PostgreSQL outbox backlog into Kafka.

A relay that was away (deploy, outage) comes back to a backlog; how fast it catches up decides how
stale the warehouse gets. The backlog (`bench.backlog`: N committed rows, 1000 aggregates,
~200-byte payloads) is re-loaded before every measurement and each measurement writes to a fresh
3-partition topic. Three variants (`bench.drain`) give the figure its scale: outboxkit's relay at
each batch size (events per Kafka transaction), the naive one-row-at-a-time poller it replaces,
and the producer's ceiling, the same records from memory with no database. Repetitions run
interleaved (naive, then outboxkit and ceiling at each batch size, again and again), so drift on
the shared machine falls on all variants alike.

The naive poller needs seconds per thousand rows; draining 200,000 rows that way would take longer
than the rest of the run, so it drains the oldest `naive_rows` rows of the same full backlog (same
table size, same index depth) and its rate is quoted as that — the tables say so.

Honesty check: after each measurement a read_committed consumer reads the topic to its end and
the run fails unless every event drained is there exactly once and nothing else is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

from sqlalchemy import Engine, create_engine

import outbox
from bench import backlog, drain
from bench.drain import Plan, Sizes
from bench.kafka import PARTITIONS, Topics, broker_facts, check_exactly, committed_event_ids, run_topics
from bench.pg import Endpoints, scratch_database, server_facts
from bench.report import BenchmarkError, Goal, Options, Report, Table, Targets, ThreeWay
from relay import RelaySettings
from runtime.kafka import KafkaSettings

TITLE = "relay drain: events/s emptying a PostgreSQL outbox backlog, outboxkit vs naive poller vs producer"
NAME = "B2 relay drain"
FULL_ROWS, QUICK_ROWS = 200_000, 5_000
FULL_NAIVE_ROWS, QUICK_NAIVE_ROWS = 5_000, 500
FULL_BATCH_SIZES, QUICK_BATCH_SIZES = (100, 500, 2000), (500,)
# The relay's default (OUTBOXKIT_RELAY_BATCH_SIZE): the goals are judged there first.
DEFAULT_BATCH_SIZE = int(RelaySettings.model_fields["batch_size"].default)
TARGETS = Targets(rate=20_000.0, vs_naive=10.0, vs_ceiling=0.5, default_batch_size=DEFAULT_BATCH_SIZE)
SIZES = Sizes(FULL_ROWS, QUICK_ROWS, FULL_NAIVE_ROWS, QUICK_NAIVE_ROWS, FULL_BATCH_SIZES, QUICK_BATCH_SIZES)


@dataclass(frozen=True)
class DrainComparison(ThreeWay):
    """One batch size: events/s per repetition of each variant, and CPU seconds per 1,000 events."""

    benchmark: str
    batch_size: int
    unit: str
    rows: int
    naive_rows: int
    outboxkit: tuple[float, ...]
    naive: tuple[float, ...]
    ceiling: tuple[float, ...]
    cpu_per_1k: dict[str, tuple[float, ...]]

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), **self.summary()}


class _Samples:
    """Measurements as they come in, by variant name ('naive', 'outboxkit/500', 'ceiling/500')."""

    def __init__(self) -> None:
        self._by_variant: dict[str, list[drain.Drained]] = {}

    def add(self, variant: str, drained: drain.Drained) -> None:
        self._by_variant.setdefault(variant, []).append(drained)

    def rates(self, variant: str) -> tuple[float, ...]:
        return tuple(d.rate for d in self._by_variant[variant])

    def cpu(self, variant: str) -> tuple[float, ...]:
        return tuple(d.cpu_per_1k for d in self._by_variant[variant])


def run(endpoints: Endpoints, options: Options) -> Report:
    """Measure every variant `options.reps` times, interleaved, in a scratch database."""
    plan, kafka = Plan.of(options, SIZES), endpoints.kafka
    with scratch_database(endpoints.pg_url) as url, run_topics(kafka, "outboxkit-bench.b2") as topics:
        engine = create_engine(url, pool_pre_ping=True)
        try:
            outbox.metadata.create_all(engine)
            samples = _Samples()
            for _ in range(options.reps):
                _repetition(engine, topics, plan, samples)
            payload = backlog.average_payload_bytes(engine)
            return _report(
                _comparisons(plan, samples), plan, payload, server_facts(engine), broker_facts(kafka)
            )
        finally:
            engine.dispose()


def _repetition(engine: Engine, topics: Topics, plan: Plan, samples: _Samples) -> None:
    """One measurement of each variant: naive, then outboxkit and the ceiling at each batch size."""
    kafka, checkpoints = topics.kafka, topics.checkpoints
    variants: list[tuple[str, int, Callable[[], drain.Drained]]] = [
        ("naive", plan.naive_rows, partial(drain.naive, engine, kafka, plan.naive_rows))
    ]
    for size in plan.batch_sizes:
        variants += [
            (f"outboxkit/{size}", plan.rows, partial(drain.outboxkit, engine, kafka, checkpoints, size)),
            (f"ceiling/{size}", plan.rows, partial(_ceiling, engine, kafka, plan.rows, size)),
        ]
    for variant, drained, measure in variants:
        samples.add(variant, _measure(engine, topics, variant, plan, drained=drained, run=measure))


def _ceiling(engine: Engine, kafka: KafkaSettings, rows: int, size: int) -> drain.Drained:
    return drain.ceiling(kafka, drain.in_memory(engine, rows), size)


def _measure(
    engine: Engine,
    topics: Topics,
    variant: str,
    plan: Plan,
    *,
    drained: int,
    run: Callable[[], drain.Drained],
) -> drain.Drained:
    """Load the backlog for a fresh topic, drain it with `run`, and refuse the figure unless the
    topic then holds the oldest `drained` events exactly once and nothing else."""
    topic = topics.new(f"b2-{variant.replace('/', '-')}")
    backlog.reload(engine, topic, plan.rows)
    expected = backlog.event_ids(engine, drained)
    result = run()
    check_exactly(f"B2 {variant}", expected, committed_event_ids(topics.kafka, topic))
    if result.events != drained:
        raise BenchmarkError(f"B2 {variant}: counted {result.events} events drained, not {drained}")
    return result


def _comparisons(plan: Plan, samples: _Samples) -> list[DrainComparison]:
    return [
        DrainComparison(
            NAME,
            size,
            "events/s",
            plan.rows,
            plan.naive_rows,
            outboxkit=samples.rates(f"outboxkit/{size}"),
            naive=samples.rates("naive"),
            ceiling=samples.rates(f"ceiling/{size}"),
            cpu_per_1k={
                "outboxkit": samples.cpu(f"outboxkit/{size}"),
                "naive": samples.cpu("naive"),
                "ceiling": samples.cpu(f"ceiling/{size}"),
            },
        )
        for size in plan.batch_sizes
    ]


def _report(
    comparisons: list[DrainComparison],
    plan: Plan,
    payload: float,
    server: dict[str, str],
    kafka: dict[str, str],
) -> Report:
    notes = [
        f"Backlog: {plan.rows:,} committed rows over {backlog.AGGREGATES:,} aggregates, {payload:.0f}-byte "
        f"JSON payloads, a fresh {PARTITIONS}-partition topic per measurement. CPU: this process's "
        "(Python and librdkafka threads), per 1,000 events; PostgreSQL's server processes are not in it.",
    ]
    if plan.naive_sampled:
        notes.append(
            f"\\* naive: drained the oldest {plan.naive_rows:,} rows of the {plan.rows:,}-row backlog one at "
            f"a time; its rate is extrapolated to the whole backlog (~{comparisons[0].naive_whole()} at that "
            "rate)."
        )
    return Report(
        comparisons, server, kafka, tables=[_table(comparisons)], goals=_goals(comparisons), notes=notes
    )


def _table(comparisons: list[DrainComparison]) -> Table:
    return Table(
        ("benchmark", "batch size", *ThreeWay.COLUMNS),
        "lr" + ThreeWay.ALIGN,
        tuple((c.benchmark, f"{c.batch_size:,}", *c.cells()) for c in comparisons),
    )


def _goals(comparisons: list[DrainComparison]) -> list[Goal]:
    """The issue's three targets, at every batch size measured (the relay's default first)."""
    return [
        goal for c in sorted(comparisons, key=TARGETS.order) for goal in TARGETS.goals(c, TARGETS.where(c))
    ]
