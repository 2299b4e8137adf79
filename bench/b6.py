"""B6, Dramatiq jobs through the outbox: what `outbox.jobs.enqueue()` costs an app transaction, and
how fast the relay and the dispatcher move jobs from the outbox into the job broker (Redis).

1. **App transaction** (txn/s, summed over client threads as in B1, whose harness it uses): a new
   `Session`, one new order, commit. The baseline sends the order's job with `actor.send()` to
   Redis after the commit (what apps do today, and lose the job if they die in between); the
   outbox variant writes it with `enqueue()` before the commit. Goal: >= 0.85 of the baseline.
2. **Jobs to the broker** (jobs/s): a committed backlog of N jobs in a PostgreSQL outbox, drained
   by the relay and the dispatcher running concurrently (threads: `bench.dispatching` says why)
   until Redis holds all N, against the broker's ceiling, a plain loop of `broker.enqueue()` of the
   same N messages. Goal: >= 0.5 of the ceiling.

Variants run interleaved (baseline, outbox; outboxkit, ceiling; again and again), so drift on the
shared machine falls on both alike. Honesty checks, each refusing the figure: in part 1 the
baseline wrote no outbox row and Redis got exactly one message per transaction; the outbox
variant wrote exactly one outbox row (and one version counter) per transaction and Redis got
none; both wrote one order per transaction. In part 2 the queue holds exactly the N message ids
of the backlog, each once, after the relay and the dispatcher stopped.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from statistics import median
from typing import Any

import dramatiq
import redis
from sqlalchemy import Engine, create_engine, func, select

import outbox
from bench import dispatching
from bench.b1 import run_clients
from bench.dispatching import Queue
from bench.drain import Drained
from bench.kafka import Topics, broker_facts, run_topics
from bench.pg import Endpoints, scratch_database, server_facts
from bench.report import BenchmarkError, Comparison, Goal, Options, Report, Table, comparison_table, spread
from jobs.delivery import broker_from_url
from outbox import outbox_table
from outbox.table import versions_table
from wire.jobs import Job

TITLE = (
    "jobs: txn/s with enqueue() vs actor.send() after commit; jobs/s outbox -> Redis vs a plain enqueue loop"
)
APP = "B6 app transaction + job"
DRAIN = "B6 jobs outbox -> Redis"
FULL_JOBS, QUICK_JOBS = 20_000, 2_000
TXN_GOAL, CEILING_GOAL = 0.85, 0.5
ORDERS = dispatching.Order.__tablename__
TABLES = (dispatching.Base.metadata.tables[ORDERS], outbox_table, versions_table)


@dataclass(frozen=True)
class Variant:
    """An app transaction, and what it must leave per committed transaction: rows per table, and
    messages in Redis."""

    name: str
    transaction: Callable[[Any, dramatiq.Actor[Any, Any]], None]
    writes: frozenset[str]
    sends: int


BASELINE = Variant("send after commit", dispatching.send_after_commit, frozenset({ORDERS}), 1)
OUTBOX = Variant(
    "enqueue",
    dispatching.enqueue_in_transaction,
    frozenset({ORDERS, outbox_table.name, versions_table.name}),
    0,
)


@dataclass(frozen=True)
class CeilingComparison:
    """Part 2: jobs/s per repetition of outboxkit and of the broker's ceiling, CPU s per 1,000 jobs."""

    benchmark: str
    jobs: int
    unit: str
    outboxkit: tuple[float, ...]
    ceiling: tuple[float, ...]
    cpu_per_1k: dict[str, tuple[float, ...]]

    @property
    def ratio(self) -> float:
        return median(self.outboxkit) / median(self.ceiling)

    def to_json(self) -> dict[str, object]:
        medians = {f"{v}_median": median(getattr(self, v)) for v in ("outboxkit", "ceiling")}
        return {**asdict(self), **medians, "vs_ceiling": self.ratio}

    def cells(self) -> tuple[str, ...]:
        return (
            self.benchmark,
            f"{self.jobs:,}",
            f"{median(self.ceiling):,.0f} {self.unit}",
            f"{median(self.outboxkit):,.0f} {self.unit}",
            f"ceiling {spread(self.ceiling)}, outboxkit {spread(self.outboxkit)}",
            f"{self.ratio:.2f}",
            ", ".join(f"{median(self.cpu_per_1k[v]):.3f}" for v in ("ceiling", "outboxkit")),
        )


@dataclass
class _Run:
    """What one run shares: the scratch database, the topics, Redis, the actor the jobs are for."""

    engine: Engine
    topics: Topics
    endpoints: Endpoints
    broker: dramatiq.Broker
    client: redis.Redis
    queues: list[Queue]
    actor: dramatiq.Actor[Any, Any] | None = None  # declared on `broker` for the app's queue (part 1)
    app_topic: str = ""  # part 1's jobs topic: never created, as no relay reads it

    def queue(self) -> tuple[str, Queue]:
        """A fresh queue name, remembered to be deleted at the end."""
        name = f"outboxkit-bench-b6.{uuid.uuid4().hex[:10]}"
        self.queues.append(Queue(self.client, name))
        return name, self.queues[-1]


def run(endpoints: Endpoints, options: Options) -> Report:
    """Both parts, interleaved repetitions, in a scratch database; Redis queues deleted at the end."""
    with _stage(endpoints) as stage:
        app = [_compare_txns(stage, clients, options) for clients in options.clients]
        drain = _compare_drains(stage, options.rows or (QUICK_JOBS if options.quick else FULL_JOBS), options)
        return _report(app, drain, server_facts(stage.engine), broker_facts(endpoints.kafka))


@contextmanager
def _stage(endpoints: Endpoints) -> Iterator[_Run]:
    with (
        scratch_database(endpoints.pg_url) as url,
        run_topics(endpoints.kafka, "outboxkit-bench.b6") as topics,
    ):
        engine = create_engine(url, pool_size=16, max_overflow=0)
        broker = broker_from_url(endpoints.redis_url)
        client = redis.Redis.from_url(endpoints.redis_url)
        stage = _Run(engine, topics, endpoints, broker, client, [])
        stage.actor = dispatching.declare(broker, stage.queue()[0])  # part 2 enqueues to queues of its own
        # Named once: librdkafka's delete_topics crashes the process (SIGSEGV) on a name given twice.
        stage.app_topic = topics.name("app-jobs")
        try:
            dispatching.Base.metadata.create_all(engine)
            outbox.metadata.create_all(engine)
            yield stage
        finally:
            for queue in stage.queues:
                queue.delete()
            client.close()
            broker.close()
            engine.dispose()


def _compare_txns(stage: _Run, clients: int, options: Options) -> Comparison:
    actor, queue = stage.actor, stage.queues[0]
    assert actor is not None
    factory = dispatching.sessions(stage.engine, stage.app_topic)
    rates: dict[str, list[float]] = {BASELINE.name: [], OUTBOX.name: []}
    for _ in range(options.reps):
        for variant in (BASELINE, OUTBOX):
            before = (_counts(stage.engine), queue.length())
            committed, rate = run_clients(
                partial(variant.transaction, factory, actor), clients, options.seconds
            )
            _verify(variant, committed, before, (_counts(stage.engine), queue.length()))
            rates[variant.name].append(rate)
    return Comparison(APP, clients, "txn/s", tuple(rates[BASELINE.name]), tuple(rates[OUTBOX.name]))


def _counts(engine: Engine) -> dict[str, int]:
    counts = select(*(select(func.count()).select_from(t).scalar_subquery().label(t.name) for t in TABLES))
    with engine.connect() as conn:
        return dict(conn.execute(counts).one()._mapping)


def _verify(
    variant: Variant, committed: int, before: tuple[dict[str, int], int], after: tuple[dict[str, int], int]
) -> None:
    """Refuse a figure unless each table grew by one row per transaction where the variant writes,
    by none elsewhere, and Redis got `variant.sends` messages per transaction."""
    grown = {table: after[0][table] - before[0][table] for table in after[0]}
    grown["Redis queue"] = after[1] - before[1]
    expected = {table: committed if table in variant.writes else 0 for table in after[0]}
    expected["Redis queue"] = committed * variant.sends
    if grown != expected:
        raise BenchmarkError(
            f"B6 {variant.name}: {committed} transactions committed, but the rows and messages grew by "
            f"{grown}, not {expected}: its rate would not measure B6"
        )


def _compare_drains(stage: _Run, jobs: int, options: Options) -> CeilingComparison:
    samples: dict[str, list[Drained]] = {"outboxkit": [], "ceiling": []}
    for _ in range(options.reps):
        drained, backlog = _drain(stage, jobs)
        samples["outboxkit"].append(drained)
        samples["ceiling"].append(_ceiling(stage, backlog))
    return CeilingComparison(
        DRAIN,
        jobs,
        "jobs/s",
        tuple(d.rate for d in samples["outboxkit"]),
        tuple(d.rate for d in samples["ceiling"]),
        {variant: tuple(d.cpu_per_1k for d in drained) for variant, drained in samples.items()},
    )


def _drain(stage: _Run, jobs: int) -> tuple[Drained, list[Job]]:
    """A fresh backlog of `jobs` for a fresh topic and queue, drained by the relay and the dispatcher."""
    name, queue = stage.queue()
    topic = stage.topics.new("jobs")
    with stage.engine.begin() as conn:
        conn.execute(outbox_table.delete())
    assert stage.actor is not None
    backlog = dispatching.load(stage.engine, stage.actor, topic, name, jobs)
    endpoints = stage.endpoints
    drained = dispatching.outboxkit(
        stage.engine,
        endpoints.kafka,
        endpoints.redis_url,
        (topic, stage.topics.checkpoints),
        queue=queue,
        jobs=jobs,
    )
    _check_queue("outboxkit", queue, [job.message_id for job in backlog])
    queue.delete()
    return drained, backlog


def _ceiling(stage: _Run, backlog: list[Job]) -> Drained:
    name, queue = stage.queue()
    drained = dispatching.ceiling(stage.broker, dispatching.messages_of(backlog, name))
    _check_queue("ceiling", queue, [job.message_id for job in backlog])
    queue.delete()
    return drained


def _check_queue(variant: str, queue: Queue, expected: list[str]) -> None:
    """Refuse a figure unless the queue holds exactly the backlog's message ids, each once."""
    wanted, held = Counter(expected), queue.message_ids()
    if held != wanted or queue.waiting() != len(expected):
        missing, extra = sum((wanted - held).values()), sum((held - wanted).values())
        raise BenchmarkError(
            f"B6 {variant}: the Redis queue holds {sum(held.values())} messages ({queue.waiting()} "
            f"waiting) for {len(expected)} jobs ({missing} missing, {extra} duplicated or foreign): its rate "
            "would not measure delivering them"
        )


def _report(
    app: list[Comparison], drain: CeilingComparison, server: dict[str, str], kafka: dict[str, str]
) -> Report:
    tables = [comparison_table(app), _drain_table(drain)]
    goals = [
        *(
            Goal(
                f">= {TXN_GOAL} of send() after commit",
                f"{c.clients} client(s)",
                f"{c.ratio:.2f}",
                c.ratio >= TXN_GOAL,
            )
            for c in app
        ),
        Goal(
            f">= {CEILING_GOAL} of the broker ceiling",
            f"{drain.jobs:,} jobs",
            f"{drain.ratio:.2f}",
            drain.ratio >= CEILING_GOAL,
        ),
    ]
    notes = [
        "App transaction: a new Session, one order, commit; the baseline sends the job with actor.send() "
        "to Redis after the commit, the outbox variant writes it with enqueue() before. Jobs: a committed "
        "backlog in the PostgreSQL outbox, relay and dispatcher as threads of one process (defaults: batches "
        "of 500), timed until Redis holds every job; the ceiling enqueues the same messages from memory. "
        "CPU: this process's, per 1,000 jobs (PostgreSQL's, Kafka's and Redis's are not in it).",
    ]
    return Report([*app, drain], server, kafka, tables=tables, goals=goals, notes=notes)


def _drain_table(drain: CeilingComparison) -> Table:
    return Table(
        (
            "benchmark",
            "jobs",
            "ceiling median",
            "outboxkit median",
            "spread (min-max)",
            "outboxkit / ceiling",
            "CPU s per 1k jobs: ceiling, outboxkit",
        ),
        "lrrrlrl",
        (drain.cells(),),
    )
