"""The demo's run: the shop writes, a relay and a sink move its events, a dispatcher and a Dramatiq
worker run its jobs, progress is shown live, and the end compares the app's tables with the
warehouse's and the jobs committed with the jobs run.

The relay, the sink and the jobs dispatcher are the real services (`relay_from_settings`,
`sink_from_settings`, `dispatcher_from_settings`), run in threads of this process so that one
command shows the whole path; in production each is a process of its own (see k8s/). The worker
is a real `dramatiq` process, as the app's workers are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine

from jobs.delivery import broker_from_url
from jobs.dispatch import Dispatcher, dispatcher_from_settings
from outboxkit.databases import app_engine, committed_events, committed_jobs
from outboxkit.demo.mailer import Mailer
from outboxkit.demo.shop import Shop
from outboxkit.demo.stage import DemoSettings, Stage, prepare
from outboxkit.demo.summary import Summary, summarise
from relay import RelayService, RelaySettings, relay_from_settings
from sink import Sink, SinkSettings, sink_from_settings


@dataclass
class Counts:
    """Events committed by the app, published by the relay (jobs too), landed in the warehouse by
    the sink; jobs committed by the app and run by the worker."""

    written: int = 0
    published: int = 0
    landed: int = 0
    jobs: int = 0
    ran: int = 0

    @property
    def lag(self) -> int:
        return self.written - self.landed

    @property
    def caught_up(self) -> bool:
        return (
            self.published >= self.written + self.jobs
            and self.landed >= self.written
            and self.ran >= self.jobs
        )


class Worker(threading.Thread):
    """A service loop in a thread; what it raised is kept for the main thread to report."""

    def __init__(self, name: str, loop: Callable[[Callable[[], bool]], object]) -> None:
        super().__init__(name=name, daemon=True)
        self._loop = loop
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop(self.stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which decides
            self.failure = exc


class WorkerProcess:
    """The e-mail service: `python -m dramatiq outboxkit.demo.worker`, its output in `worker.log`.

    In a session of its own, so that Ctrl-C reaches the demo only: the demo then lets the worker run
    the jobs still coming, and stops it (SIGTERM, Dramatiq's graceful shutdown) at the end. A demo
    killed outright cannot: the worker watches the demo's pid and then ends itself."""

    COMMAND = ("-m", "dramatiq", "outboxkit.demo.worker", "--processes", "1", "--threads", "2")

    def __init__(self, stage: Stage, workdir: Path) -> None:
        self.log = workdir / "worker.log"
        self._env = os.environ | {
            "OUTBOXKIT_DEMO_WORKER_DB_URL": stage.worker_url,
            "OUTBOXKIT_DEMO_WORKER_BROKER_URL": stage.redis_url,
            "OUTBOXKIT_DEMO_WORKER_QUEUE": stage.queue,
            "OUTBOXKIT_DEMO_WORKER_DEMO_PID": str(os.getpid()),
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, *self.COMMAND],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def failure(self) -> str | None:
        """Why the worker is gone, if it went before `stop()` asked it to."""
        code = None if self._process is None else self._process.poll()
        return None if code is None else f"the dramatiq worker exited with {code} (see {self.log})"

    def stop(self) -> None:
        """SIGTERM, as Dramatiq expects: it finishes its current jobs and exits (killed after 60 s)."""
        if self._process is None or self._process.poll() is not None:
            return  # not started, or gone by itself: `failure()` keeps saying so
        self._process.terminate()
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


class Pipeline:
    """The relay, the sink and the jobs dispatcher of one stage, each in its thread, and the worker
    process that runs the jobs."""

    def __init__(self, stage: Stage, workdir: Path) -> None:
        self.relay: RelayService = relay_from_settings(
            RelaySettings(
                database_url=stage.app_url,
                source_id=f"outboxkit-demo-{stage.run}",
                kafka=stage.kafka,
                poll_interval=0.2,
            )
        )
        self.sink: Sink = sink_from_settings(
            SinkSettings(
                warehouse_url=stage.warehouse_url,
                kafka=stage.kafka,
                group_id=f"outboxkit-demo-{stage.run}",
                tables=stage.mappings,
                poll_timeout=0.2,
            )
        )
        self.dispatcher: Dispatcher = dispatcher_from_settings(stage.jobs)
        self.workers = [
            Worker("relay", self.relay.run),
            Worker("sink", self.sink.run),
            Worker("dispatcher", self.dispatcher.run),
        ]
        self.mailer = Mailer(stage.worker_url)
        self.worker = WorkerProcess(stage, workdir)
        self._published = 0

    def start(self) -> None:
        self.worker.start()
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop.set()
        for worker in self.workers:
            worker.join(60)
        self.worker.stop()
        self.mailer.close()

    def failure(self) -> str | None:
        failed = [f"the {w.name} stopped: {w.failure}" for w in self.workers if w.failure is not None]
        return "; ".join(filter(None, [*failed, self.worker.failure()])) or None

    def counts(self, app: Engine) -> Counts:
        with suppress(RuntimeError):  # its shards changed while we looked: the last figure will do
            self._published = self.relay.stats().published
        written, jobs = committed_events(app) or 0, len(committed_jobs(app))
        return Counts(written, self._published, self.sink.stats.received, jobs, self.mailer.executed())


@dataclass
class DemoReport:
    summary: Summary
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.summary.ok


def run_demo(
    settings: DemoSettings, workdir: Path, out: TextIO, should_stop: Callable[[], bool] = lambda: False
) -> DemoReport:
    """Run the shop for `settings.seconds`, drain, compare; print as it goes."""
    stage = prepare(settings, workdir)
    writers = settings.writers or (1 if settings.app_db == "sqlite" else 4)
    engine = app_engine(stage.app_url, writers)
    pipeline = Pipeline(stage, workdir)
    broker = broker_from_url(stage.redis_url)  # the shop's: enqueue() checks jobs against its actors
    confirm = pipeline.mailer.declare(broker, stage.queue)
    shop = Shop(engine, stage.outbox, confirm, rate=settings.rate, writers=writers)
    _introduce(stage, settings, writers, out)
    progress = Progress(out, lambda: pipeline.counts(engine), settings.progress_every)
    pipeline.start()
    shop.start()
    try:
        deadline = time.monotonic() + (settings.seconds or float("inf"))
        progress.until(
            lambda: time.monotonic() >= deadline or should_stop() or pipeline.failure() is not None
        )
        shop.stop()
        out.write("  the shop stopped writing; the relay, the sink and the worker catch up\n")
        drained = time.monotonic() + settings.drain_timeout
        counts = progress.until(
            lambda: time.monotonic() >= drained or pipeline.failure() is not None, until_caught_up=True
        )
    finally:
        shop.stop()
        pipeline.stop()
        broker.close()
        engine.dispose()
    failure = pipeline.failure() or (
        None if counts.caught_up else f"not caught up after {settings.drain_timeout:.0f} s"
    )
    summary = summarise(stage, shop.done, counts.written, shop.rolled_back)
    out.write(summary.render())
    if failure:
        out.write(f"FAILED: {failure}\n")
    return DemoReport(summary, failure)


class Progress:
    """A line every `every` seconds: events written, published, landed, the lag and the rate."""

    def __init__(self, out: TextIO, counts: Callable[[], Counts], every: float = 2.0) -> None:
        self._out, self._counts, self._every = out, counts, every
        self._started = time.monotonic()
        self._last = (self._started, 0)
        out.write(
            f"  {'time':>5} {'written':>9} {'published':>10} {'landed':>9} {'lag':>7} {'landed/s':>9}"
            f" {'jobs':>7} {'ran':>7}\n"
        )

    def until(self, done: Callable[[], bool], *, until_caught_up: bool = False) -> Counts:
        while True:
            time.sleep(min(self._every, 0.2))
            finished, due = done(), time.monotonic() - self._last[0] >= self._every
            if not (finished or due or until_caught_up):
                continue  # the counts query the app database: only when they are shown or awaited
            counts = self._counts()
            finished = finished or (until_caught_up and counts.caught_up)
            if finished or due:
                self._line(counts)
            if finished:
                return counts

    def _line(self, counts: Counts) -> None:
        now = time.monotonic()
        rate = (counts.landed - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, counts.landed)
        self._out.write(
            f"  {now - self._started:>4.0f}s {counts.written:>9,} {counts.published:>10,} "
            f"{counts.landed:>9,} {counts.lag:>7,} {rate:>9,.0f} {counts.jobs:>7,} {counts.ran:>7,}\n"
        )
        self._out.flush()


def _introduce(stage: Stage, settings: DemoSettings, writers: int, out: TextIO) -> None:
    length = f"for {settings.seconds:.0f} s" if settings.seconds else "until Ctrl-C"
    topics = f"{stage.topic('customer')}, {stage.topic('order')}"
    out.write(
        f"outboxkit demo {stage.run}: a shop offering ~{settings.rate:.0f} events/s "
        f"({writers} writer(s)) {length}\n"
        f"  app        {stage.describe(stage.app_url)}: customers, orders, and the outbox\n"
        f"  relay      -> Kafka {stage.kafka.bootstrap_servers}: {topics}\n"
        f"  sink       -> {stage.describe(stage.warehouse_url)}: customers, orders (current state), "
        "customer_events, order_events (every event)\n"
        f"  jobs       a send_order_confirmation job per order -> relay -> Kafka {stage.outbox.jobs_topic} "
        f"-> dispatcher -> Redis queue {stage.queue}\n"
        f"  worker     dramatiq (1 process, 2 threads) -> {stage.describe(stage.worker_url)}: confirmations, "
        "with its inbox\n"
    )
