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

A third variant writes the same events as logical messages (`OUTBOXKIT_OUTBOX_WRITE_AS=message`,
the table-less writes of WAL capture): the same model and statement, the version counter bumped
as before, a `pg_logical_emit_message` instead of the outbox insert. Its ratio to the plain
transaction is judged against the goal of the log-based capture issue (>= 0.85). No relay runs
in any variant: B1 is what the app's transaction costs, and decoding the log happens in the relay's
walsender, which B2 and B3 measure.

Honesty checks: before and after each measurement every table is counted, and so are the logical
messages written (read from a replication slot of the scratch database's own, outside the timed
part); a run whose baseline wrote any outbox row or message, whose outbox variant wrote other
than exactly one outbox row and one new version counter per transaction, or whose message variant
other than one message and one counter and no row, raises `BenchmarkError` instead of reporting a
figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import BigInteger, Connection, Engine, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

import outbox
from bench.pg import scratch_database, server_facts
from bench.report import BenchmarkError, Comparison, Goal, Options, Report
from outbox import SETTINGS_KEY, Outbox, OutboxMixin, OutboxSettings, outbox_table
from outbox.settings import WriteAs
from outbox.table import versions_table

TITLE = (
    "app-transaction overhead: txn/s of one ORM insert + commit, plain model vs OutboxMixin (rows, messages)"
)
MESSAGES_GOAL = 0.85  # of the plain transaction's rate: the log-based capture issue's target
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


MESSAGES_WRITTEN = "logical messages"  # counted beside the tables


@dataclass(frozen=True)
class Variant:
    """A model to insert, how the app writes its events, and what must grow by one per committed
    transaction: tables, or `MESSAGES_WRITTEN`."""

    name: str
    model: type[Base]
    writes: frozenset[str]
    write_as: WriteAs = "row"

    def sessions(self, engine: Engine) -> sessionmaker[Session]:
        return sessionmaker(engine, info={SETTINGS_KEY: OutboxSettings(write_as=self.write_as)})


BASELINE = Variant("baseline", PlainOrder, frozenset({PlainOrder.__tablename__}))
OUTBOX = Variant(
    "outbox", OutboxOrder, frozenset({OutboxOrder.__tablename__, outbox_table.name, versions_table.name})
)
MESSAGES = Variant(
    "outbox as logical messages",
    OutboxOrder,
    frozenset({OutboxOrder.__tablename__, versions_table.name, MESSAGES_WRITTEN}),
    write_as="message",
)
COUNTED = (*Base.metadata.sorted_tables, *outbox.metadata.sorted_tables)


class ClientRun(NamedTuple):
    committed: int  # warm-up included: what the tables must show
    rate: float  # timed transactions per second of this client


def run(server_url: str, options: Options) -> Report:
    """Measure the variants at each client count in a scratch database on `server_url`'s server."""
    with scratch_database(server_url) as url:
        engine = create_engine(url, pool_size=max(options.clients), max_overflow=0)
        try:
            Base.metadata.create_all(engine)
            outbox.metadata.create_all(engine)
            with _MessageCounter(engine) as messages:
                comparisons = [c for clients in options.clients for c in _compare(messages, clients, options)]
            return Report(comparisons, server_facts(engine), goals=_goals(comparisons))
        finally:
            engine.dispose()


def _compare(messages: _MessageCounter, clients: int, options: Options) -> list[Comparison]:
    """The outbox's rows and its messages, each against the same plain transactions."""
    # Interleaved, never all baseline first: drift (table growth, checkpoints, autovacuum, other
    # load on the machine) then falls on every variant alike.
    rates: dict[str, list[float]] = {variant.name: [] for variant in (BASELINE, OUTBOX, MESSAGES)}
    for _ in range(options.reps):
        for variant in (BASELINE, OUTBOX, MESSAGES):
            rates[variant.name].append(_measure(messages, variant, clients, options.seconds))
    baseline = tuple(rates[BASELINE.name])
    return [
        Comparison("B1 app-transaction", clients, "txn/s", baseline, tuple(rates[OUTBOX.name])),
        Comparison(
            f"B1 app-transaction, {MESSAGES.name}", clients, "txn/s", baseline, tuple(rates[MESSAGES.name])
        ),
    ]


def _goals(comparisons: list[Comparison]) -> list[Goal]:
    return [
        Goal(
            f">= {MESSAGES_GOAL}x plain",
            f"{c.clients} client(s), {MESSAGES.name}",
            f"{c.ratio:.2f}x",
            c.ratio >= MESSAGES_GOAL,
        )
        for c in comparisons
        if c.benchmark.endswith(MESSAGES.name)
    ]


def _measure(messages: _MessageCounter, variant: Variant, clients: int, seconds: float) -> float:
    """Committed transactions per second of `clients` threads inserting `variant`'s model."""
    engine = messages.engine
    before = _counts(engine) | {MESSAGES_WRITTEN: messages.total()}
    factory = variant.sessions(engine)
    committed, rate = run_clients(lambda: _commit_order(factory, variant.model), clients, seconds)
    _verify(variant, committed, before, _counts(engine) | {MESSAGES_WRITTEN: messages.total()})
    return rate


class _MessageCounter:
    """Counts the logical messages written in the scratch database, through a temporary
    replication slot on a connection of its own: the server drops it when that connection ends,
    also when the run dies or PostgreSQL restarts under it (a slot left behind would pin the
    server's WAL and keep the scratch database from being dropped). Each count decodes what was
    written since the last one, outside any timed part."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._name = f"b1_{engine.url.database}"
        self._own = create_engine(engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._conn: Connection | None = None
        self._counted = 0

    def __enter__(self) -> _MessageCounter:
        self._conn = conn = self._own.connect()
        if conn.execute(text("SELECT current_setting('wal_level')")).scalar_one() != "logical":
            raise BenchmarkError(
                "B1 measures events written as logical messages too, which needs PostgreSQL with "
                "wal_level=logical: run it against the server scripts/services starts"
            )
        conn.execute(text(f'CREATE PUBLICATION "{self._name}"'))  # none of the tables: messages only
        conn.execute(
            text("SELECT pg_create_logical_replication_slot(:slot, 'pgoutput', true)"), {"slot": self._name}
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            try:  # dropped here, not left to the closing connection: its backend ends a moment after
                # the close returns, and the scratch database's DROP refuses a slot still active
                self._conn.execute(text("SELECT pg_drop_replication_slot(:slot)"), {"slot": self._name})
            finally:
                self._conn.close()  # and with it the slot, should the drop have failed
        self._own.dispose()

    def total(self) -> int:
        """Messages written since the counter started."""
        assert self._conn is not None, "count inside the counter's `with` block"
        self._counted += _decoded_messages(self._conn, self._name)
        return self._counted


def _decoded_messages(conn: Connection, slot: str) -> int:
    """Consume `slot`'s changes; how many were logical messages (pgoutput's 'M')."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_logical_slot_get_binary_changes(CAST(:slot AS name), NULL, NULL, "
                "'proto_version', '1', 'publication_names', CAST(:slot AS text), 'messages', 'true') "
                "WHERE get_byte(data, 0) = ascii('M')"
            ),
            {"slot": slot},
        ).scalar_one()
    )


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
    """Refuse a figure unless each written table (or the messages) grew by exactly one per
    transaction, the others by 0."""
    for table, count in after.items():
        expected = committed if table in variant.writes else 0
        if count - before[table] != expected:
            raise BenchmarkError(
                f"B1 {variant.name}: {committed} transactions committed, but {table} grew by "
                f"{count - before[table]} instead of {expected}: its rate would not measure B1"
            )
