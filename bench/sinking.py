"""B4's three ways of moving a topic of outboxkit events into a warehouse table, timed alike.

* `outboxkit`: the sink as `outboxkit sink run --drain` runs it (`sink_from_settings(...).run`):
  read_committed, every record decoded and checked as an envelope, deduped by key and version
  against the table, one warehouse transaction per batch holding the rows and the offsets;
* `naive`: the consumer people write by hand — poll one record, upsert its row
  (`INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE` the stored version is older) as a
  transaction of its own, store the offset (auto-committed to Kafka): a commit per event, on a
  bare driver connection in autocommit mode, its cheapest form (SQLAlchemy with explicit commits
  measured ~20 % slower per event on PostgreSQL);
* `ceiling`: the same records, consumed the same way (the sink's consumer settings, batches of
  the same size), their fields read into rows and bulk-loaded with the warehouse's fastest plain
  path — PostgreSQL `COPY ... FROM STDIN` (psycopg 3), DuckDB `read_csv` over a temporary file —
  into a table without a key: no dedupe, no offsets, no envelope checks.

All three write rows of the same columns (`bench.stream.COLUMNS`, the sink's upsert table).
Timing: each variant subscribes a consumer in a fresh group; the clock starts at its first poll
(so joining the group is in every figure) and stops at the warehouse commit that settles the last
event. The sink is stopped there too (its `should_stop` sees the count), so the idle poll that
tells a draining sink it is done is in no figure. CPU is `time.process_time()` of this process:
Python, librdkafka's threads and DuckDB's (in-process); PostgreSQL's server processes are not in it.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import duckdb
import psycopg
from confluent_kafka import Consumer, KafkaError, Message
from sqlalchemy import Engine, Executable, column, create_engine, func, make_url, select, table, text
from sqlalchemy.pool import NullPool

from bench.drain import Drained
from bench.kafka import read_committed_consumer
from bench.pg import scratch_database
from bench.report import BenchmarkError
from bench.stream import COLUMNS, Row, Stream, row_of
from runtime.kafka import KafkaSettings
from sink import SinkSettings, SinkStats, TableMapping, sink_from_settings
from sink.columns import KEY, SQL_TYPES, VERSION

TABLE = "orders"  # every variant's target table, in a warehouse of its own
TIMEOUT = 1800.0  # seconds a measurement may take before the run is declared broken
POLL_TIMEOUT = float(SinkSettings.model_fields["poll_timeout"].default)  # the sink's default
# The sink's consumer settings (sink.consumer.WarehouseConsumer), so the ceiling reads as it does.
SINK_CONSUMER: dict[str, str | int | bool] = {
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": True,
}
# A hand-written at-least-once consumer: the offset is stored after the commit, Kafka gets it later.
NAIVE_CONSUMER: dict[str, str | int | bool] = {
    "enable.auto.commit": True,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
}
_ORDERS = table(TABLE, *(column(name) for name in COLUMNS))
_KEY_AT, _VERSION_AT, _SEQ_AT = (list(COLUMNS).index(name) for name in (KEY, VERSION, "seq"))


class Target(NamedTuple):
    """A fresh warehouse for one measurement: its dialect and its URL as the sink takes it."""

    dialect: str  # "postgresql" or "duckdb"
    url: str

    def engine(self) -> Engine:
        """An engine that keeps no connection: a DuckDB file is free again once a query is done."""
        return create_engine(self.url, poolclass=NullPool)


@contextmanager
def fresh(dialect: str, pg_url: str, directory: Path) -> Iterator[Target]:
    """An empty warehouse: a scratch PostgreSQL database, or a new DuckDB file; gone on exit."""
    if dialect == "postgresql":
        with scratch_database(pg_url) as url:
            yield Target(dialect, url.render_as_string(hide_password=False))
        return
    path = directory / f"b4-{uuid.uuid4().hex[:8]}.duckdb"
    try:
        yield Target(dialect, f"duckdb:///{path}")
    finally:
        for leftover in (path, path.with_name(path.name + ".wal")):
            leftover.unlink(missing_ok=True)


class _Stopwatch:
    """Wall and CPU clocks for `events` events, stopped when the last one is settled."""

    def __init__(self, events: int) -> None:
        self.events = events
        self._deadline = time.monotonic() + TIMEOUT
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._result: Drained | None = None

    def done(self, settled: int) -> bool:
        """Note `settled` events; True once all are (the clocks stop then) or time is up."""
        if self._result is None and settled >= self.events:
            wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
            self._result = Drained(settled, wall, cpu)
        return self._result is not None or time.monotonic() > self._deadline

    def result(self, variant: str) -> Drained:
        if self._result is None:
            raise BenchmarkError(f"{variant}: did not settle {self.events} events within {TIMEOUT:.0f} s")
        return self._result


def outboxkit(
    target: Target, kafka: KafkaSettings, stream: Stream, batch_size: int
) -> tuple[Drained, SinkStats]:
    """Sink the whole topic with outboxkit's sink into an upsert table, in a fresh consumer group."""
    settings = SinkSettings(
        warehouse_url=target.url,
        kafka=kafka,
        group_id=f"outboxkit-bench-b4-{uuid.uuid4().hex[:8]}",
        tables=[TableMapping(topic=stream.topic, table=TABLE, mode="upsert")],
        batch_size=batch_size,
        poll_timeout=POLL_TIMEOUT,  # as the ceiling polls, whatever OUTBOXKIT_SINK_* says
    )
    sink = sink_from_settings(settings)
    watch = _Stopwatch(stream.events)
    stats = sink.run(lambda: watch.done(sink.stats.received), drain=True)
    return watch.result(f"B4 outboxkit/{target.dialect}"), stats


def naive(
    target: Target, kafka: KafkaSettings, stream: Stream, events: int
) -> tuple[Drained, dict[str, tuple[int, int]]]:
    """Upsert the first `events` records one at a time; also what it applied: key -> (version, seq)."""
    consumer = _subscribed(kafka, stream, NAIVE_CONSUMER)
    conn, placeholder = _autocommit(target)
    upsert, newest = _upsert_sql(placeholder), dict[str, tuple[int, int]]()
    try:
        conn.execute(_create_sql(target.dialect, primary_key=True))
        watch, settled = _Stopwatch(events), 0
        while not watch.done(settled):
            message = _record(consumer.poll(POLL_TIMEOUT))
            if message is None:
                continue
            row = row_of(message)
            conn.execute(upsert, row)  # autocommit: the statement is its own transaction
            consumer.store_offsets(message)
            newest[row[_KEY_AT]] = (row[_VERSION_AT], row[_SEQ_AT])
            settled += 1
    finally:
        consumer.close()
        conn.close()
    return watch.result(f"B4 naive/{target.dialect}"), newest


class _Statements(Protocol):
    """What the naive consumer needs of a driver connection (psycopg's and DuckDB's alike)."""

    def execute(self, query: str, parameters: Sequence[Any] = ..., /) -> object: ...

    def close(self) -> None: ...


def _autocommit(target: Target) -> tuple[_Statements, str]:
    """A driver connection in autocommit mode, and its parameter placeholder. Autocommit makes
    each statement its own transaction in one round trip: the fastest way to commit per event,
    so the naive figure is the best a one-at-a-time consumer can do, not a strawman."""
    if target.dialect == "postgresql":
        return psycopg.connect(_conninfo(target), autocommit=True), "%s"
    return duckdb.connect(_duckdb_path(target)), "?"  # DuckDB's Python connections autocommit


def _conninfo(target: Target) -> str:
    return make_url(target.url).set(drivername="postgresql").render_as_string(hide_password=False)


def _duckdb_path(target: Target) -> str:
    return make_url(target.url).database or ""


def _upsert_sql(placeholder: str) -> str:
    """One row in, replacing the stored one only if that holds an older version of the key."""
    names = list(COLUMNS)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name != KEY)
    return (
        f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join([placeholder] * len(names))}) "  # noqa: S608 - constants
        f"ON CONFLICT ({KEY}) DO UPDATE SET {updates} WHERE {TABLE}.{VERSION} < EXCLUDED.{VERSION}"
    )


def ceiling(target: Target, kafka: KafkaSettings, stream: Stream, batch_size: int) -> Drained:
    """Bulk-load every record's row, batch by batch, into a table without a key.

    It polls as the sink does, but never for more records than are left: a poll for a batch the
    topic cannot fill waits out the poll timeout, an end effect (the sink's, see the README) and
    not the load rate this variant stands for."""
    loader = _bulk_loader(target)
    consumer = _subscribed(kafka, stream, SINK_CONSUMER)
    watch, settled = _Stopwatch(stream.events), 0
    try:
        while not watch.done(settled):
            wanted = min(batch_size, stream.events - settled)
            rows = [row_of(m) for m in consumer.consume(wanted, POLL_TIMEOUT) if _record(m) is not None]
            if rows:
                loader.load(rows)
                settled += len(rows)
    finally:
        consumer.close()
        loader.close()
    return watch.result(f"B4 ceiling/{target.dialect}")


def _subscribed(kafka: KafkaSettings, stream: Stream, extra: dict[str, str | int | bool]) -> Consumer:
    consumer = read_committed_consumer(kafka, extra)
    consumer.subscribe([stream.topic])
    return consumer


def _record(message: Message | None) -> Message | None:
    """`message` if it is a record; None for nothing or a partition's end; raise on errors."""
    if message is None:
        return None
    error = message.error()
    if error is None:
        return message
    if error.code() == KafkaError._PARTITION_EOF:
        return None
    raise BenchmarkError(f"B4: consuming failed: {error.str()}")


def _create_sql(dialect: str, *, primary_key: bool) -> str:
    types = SQL_TYPES[dialect]
    definitions = [f"{name} {types[kind]}" for name, kind in COLUMNS.items()]
    definitions += [f"PRIMARY KEY ({KEY})"] if primary_key else []
    return f"CREATE TABLE {TABLE} ({', '.join(definitions)})"


class _BulkLoader(Protocol):
    def load(self, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...


def _bulk_loader(target: Target) -> _BulkLoader:
    """The warehouse's fastest plain load, on a driver connection of its own (no SQLAlchemy)."""
    if target.dialect == "postgresql":
        return _Copy(target)
    return _ReadCsv(target)


class _Copy:
    """PostgreSQL: `COPY ... FROM STDIN` in one transaction per batch."""

    def __init__(self, target: Target) -> None:
        self._conn = psycopg.connect(_conninfo(target), autocommit=True)
        self._conn.execute(_create_sql("postgresql", primary_key=False))
        self._sql = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN"

    def load(self, rows: Sequence[Row]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cursor, cursor.copy(self._sql) as copy:
            for row in rows:
                copy.write_row(row)

    def close(self) -> None:
        self._conn.close()


class _ReadCsv:
    """DuckDB: the batch written to a CSV file and inserted by `read_csv` with the columns' types
    and the dialect given (no sniffing), one transaction per batch. For these flat rows that is
    faster than the sink's NDJSON + `read_json` (measured: ~30 vs ~48 ms per 5,000 rows, most of
    the difference in Python writing the file)."""

    def __init__(self, target: Target) -> None:
        self._conn = duckdb.connect(_duckdb_path(target))
        self._conn.execute(_create_sql("duckdb", primary_key=False))
        types = ", ".join(f"'{name}': '{SQL_TYPES['duckdb'][kind]}'" for name, kind in COLUMNS.items())
        self._sql = (
            f"INSERT INTO {TABLE} SELECT * FROM read_csv(?, header = false, auto_detect = false, "  # noqa: S608
            f"delim = ',', quote = '\"', escape = '\"', columns = {{{types}}})"
        )

    def load(self, rows: Sequence[Row]) -> None:
        fd, path = tempfile.mkstemp(prefix="outboxkit-bench-", suffix=".csv")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
                csv.writer(file).writerows(rows)
            self._conn.execute(self._sql, [path])
        finally:
            os.unlink(path)

    def close(self) -> None:
        self._conn.close()


def held(target: Target) -> dict[str, tuple[int, int]]:
    """What the table holds: key -> (version, seq)."""
    rows = _query(target, select(_ORDERS.c[KEY], _ORDERS.c[VERSION], _ORDERS.c.seq))
    return {key: (version, seq) for key, version, seq in rows}


def loaded(target: Target) -> tuple[int, int]:
    """How many rows the table holds, and the sum of their seq (each event's row once: 0 + 1 + ...)."""
    [(count, total)] = _query(target, select(func.count(), func.sum(_ORDERS.c.seq)))
    return int(count), int(total or 0)


def columns_of(target: Target) -> list[str]:
    """The table's columns in order: the same for every variant, or they load different rows."""
    engine = target.engine()
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(text("*")).select_from(_ORDERS).limit(0)).keys())
    finally:
        engine.dispose()


def _query(target: Target, query: Executable) -> list[Row]:
    engine = target.engine()
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]
    finally:
        engine.dispose()
