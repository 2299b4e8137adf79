"""B2's three ways of moving an outbox backlog into Kafka, each timed the same way.

* `outboxkit`: the relay as `outboxkit relay run --drain` runs it — PostgreSQL capture by snapshot
  deltas (`poll`) or from a logical replication slot (`wal`), one Kafka transaction per batch
  carrying the checkpoint — built as the tests build it, on an engine with `pool_pre_ping` as
  `relay_from_settings` makes it;
* `naive`: the outbox poller people write by hand — lock the oldest row, produce it with a plain
  idempotent producer, wait for the broker's ack (`flush`), delete the row, commit; one row at a
  time, so each event costs a database commit and a Kafka round trip;
* `ceiling`: the same records, already in memory, produced transactionally in batches of the same
  size by a bare producer configured as the relay's: what the relay could reach if reading,
  checkpointing and its own Python cost nothing.

Timing covers the draining only: creating producers, `init_transactions` and the relay's start
(fencing, reading its checkpoint back; with `wal`, making its slot) happen once per process and are
left out of every variant. CPU is `time.process_time()` of this process — Python and librdkafka's
threads; PostgreSQL's server processes (which decode the log for `wal`) are not in it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy import Connection, Engine, delete, select

from bench.report import BenchmarkError, Options
from outbox import outbox_table
from relay import Position, PostgresCapture, Relay
from relay.capture import CaptureMode, envelope_of
from relay.capture.wal import drop_slot
from runtime.kafka import KafkaSettings
from wire import Envelope

TIMEOUT = 1800.0  # seconds a drain may take before the run is declared broken
# The relay's own producer settings (relay.publisher), so the ceiling is that producer's.
PRODUCER: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "linger.ms": 5,
    "partitioner": "murmur2_random",
}
_OUTBOX = outbox_table.c
_OLDEST = select(outbox_table).order_by(_OUTBOX.id).limit(1).with_for_update(skip_locked=True)

Headers = list[tuple[str, str | bytes | None]]
KafkaRecord = tuple[str, bytes | None, bytes, Headers]


@dataclass(frozen=True)
class Sizes:
    """A drain benchmark's defaults: events in the backlog, the naive variant's share, batch sizes
    — full, and for `--quick`."""

    rows: int
    quick_rows: int
    naive_rows: int
    quick_naive_rows: int
    batch_sizes: tuple[int, ...]
    quick_batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """What one run drains: the backlog, the naive variant's share of it, the batch sizes."""

    rows: int
    naive_rows: int
    batch_sizes: tuple[int, ...]

    @classmethod
    def of(cls, options: Options, sizes: Sizes) -> Plan:
        quick = options.quick
        rows = options.rows or (sizes.quick_rows if quick else sizes.rows)
        naive_rows = options.naive_rows or (sizes.quick_naive_rows if quick else sizes.naive_rows)
        batch_sizes = options.batch_sizes or (sizes.quick_batch_sizes if quick else sizes.batch_sizes)
        return cls(rows, min(naive_rows, rows), tuple(batch_sizes))

    @property
    def naive_sampled(self) -> bool:
        return self.naive_rows < self.rows


@dataclass(frozen=True)
class Drained:
    """One measurement: how many events went out, in how long, for how much of this process's CPU."""

    events: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_per_1k(self) -> float:
        """CPU seconds per 1,000 events."""
        return 1000 * self.cpu_seconds / self.events


class _Clock:
    events = 0
    seconds = 0.0
    cpu_seconds = 0.0


@contextmanager
def _timed() -> Iterator[_Clock]:
    clock = _Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    yield clock
    clock.seconds, clock.cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu


def _result(clock: _Clock) -> Drained:
    return Drained(clock.events, clock.seconds, clock.cpu_seconds)


def outboxkit(  # noqa: PLR0917 - one measurement's whole setting
    engine: Engine,
    kafka: KafkaSettings,
    checkpoint_topic: str,
    batch_size: int,
    capture: CaptureMode,
    rows: int,
) -> Callable[[], Drained]:
    """outboxkit's relay reading the outbox by `capture`, `batch_size` events per Kafka transaction:
    made now, before the backlog is loaded (a wal source's slot, made with the relay, sees only
    rows committed after it), and draining the `rows` of the outbox when called.

    It runs until it published them: the measurement ends with the last event, not with the next
    fetch that finds the log caught up."""
    source = f"bench-b2-{uuid.uuid4().hex[:8]}"
    relay = Relay.for_shard(engine, kafka, source, checkpoint_topic, batch_size=batch_size, capture=capture)

    def drained() -> Drained:
        try:
            relay.start()
            deadline = time.monotonic() + TIMEOUT
            with _timed() as clock:
                stats = relay.run(lambda: relay.stats.published >= rows or time.monotonic() > deadline)
        finally:  # the relay's loop closed it
            if capture == "wal":  # its WAL, a backlog's worth per measurement, is released at once
                drop_slot(engine, source)
        clock.events = stats.published
        return _result(clock)

    return drained


def naive(engine: Engine, kafka: KafkaSettings, rows: int) -> Drained:
    """Relay the oldest `rows` outbox rows one at a time, as a hand-written poller does."""
    producer = Producer(kafka.client_config({"enable.idempotence": True, "partitioner": "murmur2_random"}))
    failures: list[KafkaError] = []
    with engine.connect() as conn, _timed() as clock:
        for _ in range(rows):
            _relay_oldest(conn, producer, failures.append)
            clock.events += 1
    if failures:
        raise BenchmarkError(f"naive relay: {len(failures)} records failed, first: {failures[0].str()}")
    return _result(clock)


def _relay_oldest(conn: Connection, producer: Producer, on_failure: Callable[[KafkaError], None]) -> None:
    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            on_failure(error)

    with conn.begin():
        row = conn.execute(_OLDEST).one()
        event = envelope_of(row)
        headers: Headers = list(event.kafka_headers())
        producer.produce(event.topic, event.payload, event.key, headers=headers, on_delivery=delivered)
        if producer.flush(30) != 0:
            raise BenchmarkError("naive relay: the broker did not acknowledge a record within 30 s")
        conn.execute(delete(outbox_table).where(_OUTBOX.id == row.id))


def in_memory(engine: Engine, rows: int) -> list[KafkaRecord]:
    """The outbox's records as the relay would produce them, read (untimed) for the ceiling."""
    batch = PostgresCapture(engine).fetch(Position(), rows)
    return [_record(r.envelope) for r in batch.rows]


def _record(event: Envelope) -> KafkaRecord:
    headers: Headers = list(event.kafka_headers())
    return event.topic, event.key, event.payload, headers


def ceiling(kafka: KafkaSettings, records: Sequence[KafkaRecord], batch_size: int) -> Drained:
    """Produce `records` in transactions of `batch_size`, no database: the producer's own limit."""
    config = {**PRODUCER, "transactional.id": f"outboxkit-bench-ceiling.{uuid.uuid4().hex[:8]}"}
    producer = Producer(kafka.client_config(config))
    producer.init_transactions(30)
    with _timed() as clock:
        for first in range(0, len(records), batch_size):
            producer.begin_transaction()
            for record in records[first : first + batch_size]:
                _produce(producer, record)
            producer.commit_transaction(30)
            clock.events += len(records[first : first + batch_size])
    return _result(clock)


def _produce(producer: Producer, record: KafkaRecord) -> None:
    topic, key, value, headers = record
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
        except BufferError:  # local queue full: let deliveries drain, as the relay's publisher does
            producer.poll(0.1)
        else:
            return
