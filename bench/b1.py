"""B1, app-transaction overhead: what `OutboxMixin` costs an application's write transactions.

Each transaction is what an app creating orders does per request: a new `Session`, one new order
(its id from the table's sequence), commit. The baseline model is plain; the outbox model has the
same columns and `OutboxMixin`, so its flush also bumps the order's counter in `outbox_versions`
and inserts its outbox row. Rate = committed transactions per second, summed over the clients.

Clients are threads sharing one engine whose pool holds a connection for each. Threads rather than
processes: psycopg releases the GIL while it waits for the server, and on the 2-core reference
machine PostgreSQL needs a core as much as Python does. Measured there, 8 clients: threads gave
baseline ~1,500 and outbox ~780 txn/s; 8 spawned processes gave baseline 870-1,540 and outbox
520-640 txn/s, noisier and no faster, as 8 interpreters and 8 backends fight over 2 cores. So at
8 clients both variants are bound by CPU, the outbox one mostly by its own Python under the GIL
(~1.2 ms of client CPU per transaction against ~0.55 ms): the ratio there shows that cost too.
In one process the baseline also runs the mixin's `Session` listeners (they are global, as in an
app with some outbox models); measured CPU per baseline transaction with and without them differed
by less than the run-to-run noise (~470 us either way).

Honesty checks: before and after each measurement every table is counted, and a run whose
baseline wrote any outbox row, or whose outbox variant wrote other than exactly one outbox row and
one new version counter per transaction, raises `BenchmarkError` instead of reporting a figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import BigInteger, Engine, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import outbox
from bench.pg import scratch_database, server_facts
from bench.report import BenchmarkError, Comparison, Options, Report
from outbox import Outbox, OutboxMixin, outbox_table
from outbox.table import versions_table

TITLE = "app-transaction overhead: txn/s of one ORM insert + commit, plain model vs OutboxMixin"
WARMUP_TXNS = 20  # per client, untimed: fills the pool and SQLAlchemy's and psycopg's statement caches


class Base(DeclarativeBase):
    """B1's own models, so its tables are created in its scratch database only."""


class OrderColumns:
    """The same row for both variants, shaped like the tests' `Order`."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    amount_cents: Mapped[int]
    note: Mapped[str | None] = mapped_column(String(2000), default=None)


class PlainOrder(OrderColumns, Base):
    __tablename__ = "b1_orders_plain"


class OutboxOrder(OrderColumns, OutboxMixin, Base):
    __tablename__ = "b1_orders_outbox"
    __outbox__ = Outbox(topic="shop.orders", aggregate_type="order")


@dataclass(frozen=True)
class Variant:
    """A model to insert, and the tables that must grow by one row per committed transaction."""

    name: str
    model: type[Base]
    writes: frozenset[str]


BASELINE = Variant("baseline", PlainOrder, frozenset({PlainOrder.__tablename__}))
OUTBOX = Variant(
    "outbox", OutboxOrder, frozenset({OutboxOrder.__tablename__, outbox_table.name, versions_table.name})
)
COUNTED = (*Base.metadata.sorted_tables, *outbox.metadata.sorted_tables)


class ClientRun(NamedTuple):
    committed: int  # warm-up included: what the tables must show
    rate: float  # timed transactions per second of this client


def run(server_url: str, options: Options) -> Report:
    """Measure both variants at each client count in a scratch database on `server_url`'s server."""
    with scratch_database(server_url) as url:
        engine = create_engine(url, pool_size=max(options.clients), max_overflow=0)
        try:
            Base.metadata.create_all(engine)
            outbox.metadata.create_all(engine)
            comparisons = [_compare(engine, clients, options) for clients in options.clients]
            return Report(comparisons, server_facts(engine))
        finally:
            engine.dispose()


def _compare(engine: Engine, clients: int, options: Options) -> Comparison:
    # Interleaved, never all baseline first: drift (table growth, checkpoints, autovacuum, other
    # load on the machine) then falls on both variants alike.
    baseline: list[float] = []
    with_outbox: list[float] = []
    for _ in range(options.reps):
        baseline.append(_measure(engine, BASELINE, clients, options.seconds))
        with_outbox.append(_measure(engine, OUTBOX, clients, options.seconds))
    return Comparison("B1 app-transaction", clients, "txn/s", tuple(baseline), tuple(with_outbox))


def _measure(engine: Engine, variant: Variant, clients: int, seconds: float) -> float:
    """Committed transactions per second of `clients` threads inserting `variant`'s model."""
    before = _counts(engine)
    factory = sessionmaker(engine)
    committed, rate = run_clients(lambda: _commit_order(factory, variant.model), clients, seconds)
    _verify(variant, committed, before, _counts(engine))
    return rate


def run_clients(transaction: Callable[[], None], clients: int, seconds: float) -> tuple[int, float]:
    """`clients` threads each running `transaction` over and over for `seconds` (after a warm-up);
    the transactions run in all (warm-up included: what the tables must show) and the timed rate,
    summed over the clients. B6 measures its app transactions with it too."""
    start = threading.Barrier(clients, timeout=60)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(_client, transaction, seconds, start) for _ in range(clients)]
        runs = _gather(futures)
    return sum(r.committed for r in runs), sum(r.rate for r in runs)


def _client(transaction: Callable[[], None], seconds: float, start: threading.Barrier) -> ClientRun:
    """Warm up, wait for the other clients, then run transactions until `seconds` have passed."""
    try:
        for _ in range(WARMUP_TXNS):
            transaction()
        start.wait()
    except BaseException:
        start.abort()  # the other clients stop waiting: the run fails now, not at the timeout
        raise
    began = time.perf_counter()
    deadline, timed = began + seconds, 0
    while time.perf_counter() < deadline:
        transaction()
        timed += 1
    return ClientRun(WARMUP_TXNS + timed, timed / (time.perf_counter() - began))


def _commit_order(factory: sessionmaker[Session], model: type[Base]) -> None:
    with factory.begin() as session:
        session.add(model(customer="ada", amount_cents=1000))


def _gather(futures: list[Future[ClientRun]]) -> list[ClientRun]:
    """The clients' runs; on failure, the error that broke the start barrier, not the barrier's own."""
    failures = [exc for future in futures if (exc := future.exception()) is not None]
    if failures:
        raise min(failures, key=lambda exc: isinstance(exc, threading.BrokenBarrierError))
    return [future.result() for future in futures]


def _counts(engine: Engine) -> dict[str, int]:
    counts = select(*(select(func.count()).select_from(t).scalar_subquery().label(t.name) for t in COUNTED))
    with engine.connect() as conn:
        return dict(conn.execute(counts).one()._mapping)


def _verify(variant: Variant, committed: int, before: dict[str, int], after: dict[str, int]) -> None:
    """Refuse a figure unless each written table grew by exactly one row per transaction, others by 0."""
    for table, count in after.items():
        expected = committed if table in variant.writes else 0
        if count - before[table] != expected:
            raise BenchmarkError(
                f"B1 {variant.name}: {committed} transactions committed, but {table} grew by "
                f"{count - before[table]} rows instead of {expected}: its rate would not measure B1"
            )
