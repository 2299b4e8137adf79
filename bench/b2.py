"""B2, relay drain: how fast outboxkit's relay empties a PostgreSQL outbox backlog into Kafka.

A relay that was away (deploy, outage) comes back to a backlog; how fast it catches up decides how
stale the warehouse gets. The backlog (`bench.backlog`: N committed rows, 1000 aggregates,
~200-byte payloads) is re-loaded before every measurement and each measurement writes to a fresh
3-partition topic. Three variants (`bench.drain`) give the figure its scale: outboxkit's relay at
each batch size (events per Kafka transaction) with each capture (`--capture`: polling and wal by
default, wal's rate judged against polling's), the naive one-row-at-a-time poller it replaces,
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

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from statistics import median

from sqlalchemy import Engine, create_engine

import outbox
from bench import backlog, drain
from bench.drain import Plan, Sizes
from bench.kafka import PARTITIONS, Topics, broker_facts, check_exactly, committed_event_ids, run_topics
from bench.pg import Endpoints, scratch_database, server_facts
from bench.report import BenchmarkError, Goal, Options, Report, Table, Targets, ThreeWay
from relay import RelaySettings
from relay.capture import CaptureMode
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
    """One capture at one batch size: events/s per repetition of each variant (naive and ceiling
    read no outbox by capture: theirs are the same in both), and CPU seconds per 1,000 events."""

    benchmark: str
    capture: CaptureMode
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
                _repetition(engine, topics, plan, options.captures, samples)
            payload = backlog.average_payload_bytes(engine)
            return _report(
                _comparisons(plan, options.captures, samples),
                plan,
                payload,
                server_facts(engine),
                broker_facts(kafka),
            )
        finally:
            engine.dispose()


Prepare = Callable[[], Callable[[], drain.Drained]]  # called before the backlog is loaded; drains after


def _repetition(
    engine: Engine, topics: Topics, plan: Plan, captures: Sequence[CaptureMode], samples: _Samples
) -> None:
    """One measurement of each variant: naive, then at each batch size outboxkit with each capture
    and the ceiling."""
    kafka, checkpoints = topics.kafka, topics.checkpoints
    variants: list[tuple[str, int, Prepare]] = [
        ("naive", plan.naive_rows, _ready(partial(drain.naive, engine, kafka, plan.naive_rows)))
    ]
    for size in plan.batch_sizes:
        variants += [
            (
                _outboxkit(c, size),
                plan.rows,
                partial(drain.outboxkit, engine, kafka, checkpoints, size, c, plan.rows),
            )
            for c in captures
        ]
        variants.append(
            (f"ceiling/{size}", plan.rows, _ready(partial(_ceiling, engine, kafka, plan.rows, size)))
        )
    for variant, drained, prepare in variants:
        samples.add(variant, _measure(engine, topics, variant, plan, drained=drained, prepare=prepare))


def _ready(run: Callable[[], drain.Drained]) -> Prepare:
    """A variant that needs nothing made before the backlog is loaded."""
    return lambda: run


def _outboxkit(capture: CaptureMode, size: int) -> str:
    """The variant's name: 'outboxkit/500' polling (the names of the runs before wal), 'outboxkit-wal/500'."""
    return f"outboxkit{'' if capture == 'poll' else '-' + capture}/{size}"


def _ceiling(engine: Engine, kafka: KafkaSettings, rows: int, size: int) -> drain.Drained:
    return drain.ceiling(kafka, drain.in_memory(engine, rows), size)


def _measure(
    engine: Engine,
    topics: Topics,
    variant: str,
    plan: Plan,
    *,
    drained: int,
    prepare: Prepare,
) -> drain.Drained:
    """Load the backlog for a fresh topic (`prepare` first), drain it, and refuse the figure unless
    the topic then holds the oldest `drained` events exactly once and nothing else."""
    topic = topics.new(f"b2-{variant.replace('/', '-')}")
    run = prepare()
    backlog.reload(engine, topic, plan.rows)
    expected = backlog.event_ids(engine, drained)
    result = run()
    check_exactly(f"B2 {variant}", expected, committed_event_ids(topics.kafka, topic))
    if result.events != drained:
        raise BenchmarkError(f"B2 {variant}: counted {result.events} events drained, not {drained}")
    return result


def _comparisons(plan: Plan, captures: Sequence[CaptureMode], samples: _Samples) -> list[DrainComparison]:
    return [
        DrainComparison(
            NAME,
            capture,
            size,
            "events/s",
            plan.rows,
            plan.naive_rows,
            outboxkit=samples.rates(_outboxkit(capture, size)),
            naive=samples.rates("naive"),
            ceiling=samples.rates(f"ceiling/{size}"),
            cpu_per_1k={
                "outboxkit": samples.cpu(_outboxkit(capture, size)),
                "naive": samples.cpu("naive"),
                "ceiling": samples.cpu(f"ceiling/{size}"),
            },
        )
        for size in plan.batch_sizes
        for capture in captures
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
        ("benchmark", "capture", "batch size", *ThreeWay.COLUMNS),
        "llr" + ThreeWay.ALIGN,
        tuple((c.benchmark, c.capture, f"{c.batch_size:,}", *c.cells()) for c in comparisons),
    )


def _goals(comparisons: list[DrainComparison]) -> list[Goal]:
    """The relay issue's three targets for each capture, and the WAL issue's (wal drains at least
    as fast as polling), at every batch size measured (the relay's default first)."""
    ordered = sorted(comparisons, key=TARGETS.order)
    goals = [goal for c in ordered for goal in TARGETS.goals(c, f"{c.capture}, {TARGETS.where(c)}")]
    by_size = {(c.capture, c.batch_size): c for c in ordered}
    for c in ordered:
        poll = by_size.get(("poll", c.batch_size))
        if c.capture == "wal" and poll is not None:
            wal_rate, poll_rate = median(c.outboxkit), median(poll.outboxkit)
            goals.append(
                Goal(
                    "wal >= polling's rate",
                    TARGETS.where(c),
                    f"wal / poll {wal_rate / poll_rate:.2f} ({wal_rate:,.0f} vs {poll_rate:,.0f} events/s)",
                    wal_rate >= poll_rate,
                )
            )
    return goals
