"""The open-loop writers of B3 and B5: application processes committing one outbox event per
transaction on a fixed schedule, whatever the latency of earlier commits.

Each transaction is `outbox.publish()` of one domain event in an ORM `Session`, then commit. Not
the mixin with a business row: that costs about 0.9 ms of writer CPU per event against 0.5 ms
(measured on the 2-core reference machine), and at 1,000 events/s that difference is CPU the
relay under test would not get. The relay's work per event is the same either way.

Open loop, because a writer that waits for its previous commit before scheduling the next one
slows down exactly when the system is slow, and hides that time from the latencies (coordinated
omission). Event `seq` is due at `start + seq / rate`; a writer that is late sends at once, and
both times are recorded, so the latency from the due time shows what a late writer hid.

Writers are processes (spawned), not threads of the benchmark: in the relay's process their
Python would hold the GIL the relay needs, and add their CPU time to its latency — in production
the relay is a sidecar of its own. All clocks are `time.monotonic()`, which on Linux is one clock
for every process, so times taken here and in the benchmark's consumer thread subtract.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import sessionmaker

from bench.report import BenchmarkError
from outbox import Event, publish

WARMUP = 20  # rolled-back transactions per writer before the clock starts: they emit nothing
AGGREGATES = 1000
PER_WRITER = 250.0  # events/s one writer process is asked for (a commit takes 1-3 ms on 2 cores)


@dataclass(frozen=True)
class Schedule:
    """Writer `writer` of `writers` sends events writer, writer + writers, ... of `events`."""

    url: str
    topic: str
    rate: float
    events: int
    writer: int
    writers: int


class Sent(NamedTuple):
    """One committed event: its number and when it was due, began and had committed."""

    seq: int
    due: float
    started: float
    committed: float


def write(schedule: Schedule, ready: Any, go: Any, start: Any, results: Any) -> None:
    """Process entry point: warm up, meet the others at `ready`, learn the common start after `go`,
    then commit this writer's share of the schedule and put the `Sent` list (or the error) on `results`."""
    try:
        engine = create_engine(schedule.url, pool_size=1, max_overflow=0)
        _warm_up(engine, schedule.topic)
        ready.wait()
        go.wait()
        cpu = time.process_time()
        sent = _send(schedule, start.value, engine)
        results.put(("sent", sent, time.process_time() - cpu))
    except BaseException as exc:
        ready.abort()
        go.abort()
        results.put(("error", f"writer {schedule.writer}: {exc!r}"))
        raise


def ping_type(topic: str) -> type[Event]:
    """The event the writers publish, routed to `topic` (each measurement has a topic of its own)."""

    class Ping(Event, topic=topic, aggregate_type="ping", key="group"):
        """An event that names its place in the schedule, for the consumer to match it."""

        group: str
        seq: int
        due: float

    return Ping


def _send(schedule: Schedule, start: float, engine: Engine) -> Sequence[Sent]:
    ping, factory = ping_type(schedule.topic), sessionmaker(engine)
    sent: list[Sent] = []
    for seq in range(schedule.writer, schedule.events, schedule.writers):
        due = start + seq / schedule.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic()
        with factory.begin() as session:
            publish(session, ping(group=f"ping-{seq % AGGREGATES}", seq=seq, due=due))
        sent.append(Sent(seq, due, started, time.monotonic()))
    return sent


def _warm_up(engine: Engine, topic: str) -> None:
    """Connect, and run the whole write path, in transactions that roll back: they emit nothing."""
    ping, factory = ping_type(topic), sessionmaker(engine)
    for n in range(WARMUP):
        with factory() as session:
            publish(session, ping(group="warm-up", seq=-n - 1, due=0.0))
            session.rollback()


def needed(rate: float) -> int:
    """Writer processes for `rate` events/s."""
    return max(1, math.ceil(rate / PER_WRITER))


def write_all(url: str, topic: str, rate: float, events: int) -> tuple[list[Sent], float]:
    """Run the schedule on `ceil(rate / PER_WRITER)` spawned writer processes; return what they
    committed and the CPU seconds they spent on it (start-up and warm-up not counted)."""
    count = needed(rate)
    context = multiprocessing.get_context("spawn")
    ready, go = context.Barrier(count + 1, timeout=120), context.Barrier(count + 1, timeout=120)
    start, results = context.Value("d", 0.0), context.Queue()
    processes = [
        context.Process(
            target=write,
            args=(Schedule(url, topic, rate, events, n, count), ready, go, start, results),
            daemon=True,
        )
        for n in range(count)
    ]
    for process in processes:
        process.start()
    try:
        return _run_schedule(ready, go, start, results, count=count, seconds=events / rate)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def _run_schedule(
    ready: threading.Barrier, go: threading.Barrier, start: Any, results: Any, *, count: int, seconds: float
) -> tuple[list[Sent], float]:
    try:
        ready.wait()  # every writer connected and warmed up
        start.value = time.monotonic() + 0.1
        go.wait()
    except threading.BrokenBarrierError:
        raise BenchmarkError(f"writers: one failed to start: {_first_error(results)}") from None
    sent: list[Sent] = []
    cpu = 0.0
    for _ in range(count):
        kind, value, *spent = results.get(timeout=seconds + 120)
        if kind != "sent":
            raise BenchmarkError(f"writers: {value}")
        sent += [Sent(*item) for item in value]
        cpu += spent[0]
    return sent, cpu


def _first_error(results: Any) -> str:
    try:
        return str(results.get(timeout=5)[1])
    except queue.Empty:
        return "no error reported (killed?)"
