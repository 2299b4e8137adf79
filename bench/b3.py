"""B3, live latency: how long a committed outbox event takes to become visible in Kafka, and to
land in the warehouse.

What a consumer of the events waits for in steady state: from the application's commit to the
moment a read_committed consumer can read the event. A relay runs in a background thread, as the
sidecar's loop (`Relay.run` with a stop flag) on a PostgreSQL outbox; open-loop writer processes
(`bench.writers`) commit one event per transaction at the offered rate; a read_committed consumer
thread notes when each event arrives, matching it by the schedule number in its payload; and
outboxkit's sink, in a thread of its own, writes the topic into a PostgreSQL table (append mode)
and notes when each event's batch committed there.

An idle relay sleeps `poll_interval` between polls, so the latency is measured at the default
0.5 s (the baseline) and at 0.02 s, at each offered rate (100, 1,000, 2,000 and 5,000 events/s
by default), and the highest rate each variant sustains is named. `--wakeup` adds the relay woken
by the app's NOTIFY (`relay.wakeup.Listener`, polling 0.5 s as fallback), which `Relay.run` does not use. Each
variant runs with each capture (`--capture`; polling and wal by default, wal compared with its
polling twin): an idle wal relay waits on its slot's replication socket, woken by the commit
itself, so its poll interval (and the NOTIFY of `--wakeup`) only bounds that wait. Each
measurement starts from an empty outbox with a fresh topic and a fresh relay source (with wal,
a fresh slot, made before the writers start and dropped after), and repetitions are interleaved
(0.5, 0.02, 0.5, ...). Latencies are percentiles of every event of a
measurement; the table gives the median over the repetitions with their min-max.

Honesty checks: the writers must have committed every event of the schedule, the consumer must
have seen each committed event exactly once and nothing else, and the topic read to its end
after the relay stopped must hold exactly those records; otherwise the run fails.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition
from sqlalchemy import URL, Engine, create_engine, text

import outbox
from bench import writers
from bench.kafka import (
    PARTITIONS,
    Topics,
    broker_facts,
    check_exactly,
    committed_event_ids,
    header,
    read_committed_consumer,
    run_topics,
)
from bench.pg import Endpoints, scratch_database, server_facts
from bench.report import BenchmarkError, Goal, Options, Report, Table, percentile
from outbox.settings import OutboxSettings
from relay import Relay, RelayService, SoleLease
from relay.capture import CaptureMode
from relay.capture.wal import drop_slot
from relay.wakeup import Listener
from runtime.kafka import KafkaSettings
from sink import Sink, TableMapping
from sink.consumer import WarehouseConsumer
from sink.run import by_topic
from sink.warehouse import Batch, Outcome
from sink.writer import SqlWriter
from wire.headers import HEADER_EVENT_ID

TITLE = "live latency: commit -> visible to a read_committed consumer, open-loop writers, relay polling"
NAME = "B3 live latency"
FULL_RATES, QUICK_RATES = (100.0, 1000.0, 2000.0, 5000.0), (200.0,)
SUSTAINED = 0.95  # of the offered rate achieved, with due -> visible p99 within SUSTAINED_P99_MS
SUSTAINED_P99_MS = 1000.0
POLL_INTERVALS = (0.5, 0.02)  # the relay's default first: the baseline
SETTLE = 30.0  # seconds past the last commit for the last events to arrive
GOAL_P99_MS, GOAL_RATE = 100.0, 1000.0
WAL_GOAL_P99_MS = 50.0  # the WAL issue's goal for capture=wal, at GOAL_RATE
# librdkafka's defaults: what the sink's consumer uses too. A fetch waits for new data up to
# fetch.wait.max.ms (500 ms), but the broker answers as soon as committed data is there.
CONSUMER: dict[str, str | int | bool] = {}


class Variant(NamedTuple):
    """How the relay reads the outbox (`capture`), and how it waits when it found nothing new:
    `poll_interval`, or until the app's NOTIFY."""

    poll_interval: float
    wakeup: bool = False
    capture: CaptureMode = "poll"

    @property
    def label(self) -> str:
        capture = "wal, " if self.capture == "wal" else ""  # polling: as labelled before wal existed
        return f"{capture}poll {self.poll_interval:g} s" + (" + wake-up" if self.wakeup else "")

    @property
    def polling_twin(self) -> Variant:
        """The same waiting with polling capture: what a wal variant is judged against."""
        return self._replace(capture="poll")


@dataclass(frozen=True)
class Latencies:
    """One measurement: rates, and percentiles in milliseconds."""

    poll_interval: float
    wakeup: bool
    capture: CaptureMode
    offered: float
    achieved: float
    events: int
    commit_p50: float
    commit_p95: float
    commit_p99: float
    commit_max: float
    warehouse_p50: float  # commit -> its row committed in the warehouse by outboxkit's sink
    warehouse_p99: float
    due_p99: float  # from the time the event was due: includes a late writer's lag
    lag_p99: float  # how late writers started a transaction


FIGURES = (
    ("achieved", "achieved rate", "events/s"),
    ("commit_p50", "commit -> visible p50", "ms"),
    ("commit_p95", "commit -> visible p95", "ms"),
    ("commit_p99", "commit -> visible p99", "ms"),
    ("commit_max", "commit -> visible max", "ms"),
    ("warehouse_p50", "commit -> in the warehouse p50", "ms"),
    ("warehouse_p99", "commit -> in the warehouse p99", "ms"),
    ("due_p99", "due -> visible p99", "ms"),
    ("lag_p99", "writer start lag p99", "ms"),
)


@dataclass(frozen=True)
class LatencyResult:
    """Every repetition of one variant at one offered rate."""

    benchmark: str
    poll_interval: float
    wakeup: bool
    capture: CaptureMode
    offered: float
    runs: tuple[Latencies, ...]

    @property
    def sustained(self) -> bool:
        """The pipeline kept up: the writers achieved the rate and no backlog built up."""
        return (
            self.median("achieved") >= SUSTAINED * self.offered and self.median("due_p99") <= SUSTAINED_P99_MS
        )

    @property
    def variant(self) -> Variant:
        return Variant(self.poll_interval, self.wakeup, self.capture)

    @property
    def label(self) -> str:
        return self.variant.label

    def median(self, figure: str) -> float:
        return float(median(getattr(run, figure) for run in self.runs))

    def to_json(self) -> dict[str, object]:
        medians = {f"{figure}_median": self.median(figure) for figure, _, _ in FIGURES}
        return {**asdict(self), **medians}


def run(endpoints: Endpoints, options: Options) -> Report:
    """Per offered rate, measure each variant `options.reps` times, interleaved, in a scratch database."""
    rates = options.rates or (QUICK_RATES if options.quick else FULL_RATES)
    waits = [Variant(interval) for interval in options.poll_intervals or POLL_INTERVALS]
    waits += [Variant(POLL_INTERVALS[0], wakeup=True)] if options.wakeup else []
    variants = [wait._replace(capture=capture) for capture in options.captures for wait in waits]
    kafka = endpoints.kafka
    with scratch_database(endpoints.pg_url) as url, run_topics(kafka, "outboxkit-bench.b3") as topics:
        engine = create_engine(url, pool_pre_ping=True)
        try:
            outbox.metadata.create_all(engine)
            results = []
            for rate in rates:
                runs: dict[Variant, list[Latencies]] = {variant: [] for variant in variants}
                for _ in range(options.reps):
                    for variant in variants:
                        runs[variant].append(_measure(engine, url, topics, variant, rate, options.seconds))
                results += [
                    LatencyResult(NAME, v.poll_interval, v.wakeup, v.capture, rate, tuple(runs[v]))
                    for v in variants
                ]
            return _report(results, options.seconds, server_facts(engine), broker_facts(kafka))
        finally:
            engine.dispose()


def _measure(  # noqa: PLR0917 - one measurement's whole setting
    engine: Engine, url: URL, topics: Topics, variant: Variant, rate: float, seconds: float
) -> Latencies:
    """One measurement on an empty outbox: relay and consumer first, then the writers' schedule."""
    _empty(engine)
    topic = topics.new(
        f"b3-{variant.capture}-poll-{variant.poll_interval:g}{'-wakeup' if variant.wakeup else ''}"
    )
    events = max(1, round(rate * seconds))
    with (
        _Watcher(topics.kafka, topic) as watcher,
        _SinkThread(topics.kafka, topic, url) as sink,
        _RelayThread(engine, topics, variant) as relay,
    ):
        sent, _ = writers.write_all(url.render_as_string(hide_password=False), topic, rate, events)
        deadline = time.monotonic() + variant.poll_interval + SETTLE
        watcher.wait_for(len(sent), deadline)
        sink.wait_for(len(sent), deadline)
        relay.stop()
    seen = watcher.seen
    _check(events, sent, seen)
    if sorted(sink.landed) != sorted(s.seq for s in sent):
        raise BenchmarkError(f"B3: the sink landed {len(sink.landed)} of the {len(sent)} events committed")
    # And the whole topic, read to its end once the relay stopped: no copy came after the watcher.
    check_exactly("B3 topic", [event_id for _, _, event_id in seen], committed_event_ids(topics.kafka, topic))
    return _latencies(variant, rate, sent, {seq: at for seq, at, _ in seen}, sink.landed)


def _empty(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE outbox, outbox_versions"))


class _Watcher:
    """A read_committed consumer in a thread, noting when each event becomes visible: (seq, time, id)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._kafka, self._topic = kafka, topic
        self.seen: list[tuple[int, float, str]] = []
        self._ready, self._stop = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="b3-watcher", daemon=True)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        if not self._ready.wait(60):
            raise BenchmarkError(f"B3: the consumer could not start on {self._topic!r}: {self._error!r}")
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if kind is None and self._error is not None:
            raise BenchmarkError(f"B3: the consumer failed: {self._error!r}") from self._error

    def wait_for(self, count: int, deadline: float) -> None:
        while len(self.seen) < count and time.monotonic() < deadline and self._error is None:
            time.sleep(0.01)

    def _run(self) -> None:
        consumer = read_committed_consumer(self._kafka, CONSUMER)
        try:
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
            consumer.poll(1.0)  # connects and fetches once (the topic is still empty)
            self._ready.set()
            while not self._stop.is_set():
                self._note(consumer.poll(0.05))
        except Exception as exc:  # noqa: BLE001 - handed to the benchmark's thread, which raises it
            self._error = exc
        finally:
            consumer.close()

    def _note(self, message: Message | None) -> None:
        if message is None:
            return
        at = time.monotonic()
        error = message.error()
        if error is not None:
            raise BenchmarkError(f"B3: consuming failed: {error.str()}")
        seq = int(json.loads(message.value() or b"{}")["seq"])
        self.seen.append((seq, at, header(message, HEADER_EVENT_ID)))


class _TimedWriter(SqlWriter):
    """The sink's writer, noting when each event's batch committed: (seq -> time)."""

    def __init__(self, engine: Engine, mappings: Sequence[TableMapping]) -> None:
        super().__init__(engine, mappings)
        self.landed: dict[int, float] = {}

    def write(self, group_id: str, batch: Batch) -> Outcome:
        outcome = super().write(group_id, batch)
        at = time.monotonic()
        for rows in batch.rows.values():
            for row in rows:
                self.landed[int(row.values["seq"])] = at
        return outcome


class _SinkThread:
    """outboxkit's sink (append mode, its defaults) in a background thread into a table of the
    scratch database, as `outboxkit sink run` composes it, until the context exits."""

    def __init__(self, kafka: KafkaSettings, topic: str, url: URL) -> None:
        name = f"b3_{uuid.uuid4().hex[:8]}"
        mapping = TableMapping(topic=topic, table=name, mode="append")
        self._writer = _TimedWriter(create_engine(url), [mapping])
        consumer = WarehouseConsumer(
            kafka, name, [topic], lambda topics: self._writer.stored_offsets(name, topics)
        )
        self._sink = Sink(consumer, self._writer, name, by_topic([mapping]))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="b3-sink", daemon=True)

    @property
    def landed(self) -> dict[int, float]:
        return self._writer.landed

    def __enter__(self) -> _SinkThread:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)
        if kind is None and self._error is not None:
            raise BenchmarkError(f"B3: the sink failed: {self._error!r}") from self._error

    def wait_for(self, count: int, deadline: float) -> None:
        while len(self.landed) < count and time.monotonic() < deadline and self._error is None:
            time.sleep(0.01)

    def _run(self) -> None:
        try:
            self._sink.run(self._stop.is_set)
        except Exception as exc:  # noqa: BLE001 - handed to the benchmark's thread, which raises it
            self._error = exc


class _RelayThread:
    """outboxkit's relay loop in a background thread, as the sidecar runs it, until `stop()`. Made
    before the writers start: a wal relay's slot sees only rows committed after it exists."""

    def __init__(self, engine: Engine, topics: Topics, variant: Variant) -> None:
        self._source = f"bench-b3-{uuid.uuid4().hex[:8]}"
        self._relay = Relay.for_shard(
            engine, topics.kafka, self._source, topics.checkpoints, capture=variant.capture
        )
        self._engine, self._variant = engine, variant
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="b3-relay", daemon=True)

    def __enter__(self) -> _RelayThread:
        self._relay.start()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.stop()  # the relay's loop closes it
        if self._variant.capture == "wal":  # a slot pins WAL for as long as it exists
            drop_slot(self._engine, self._source)
        if kind is None and self._error is not None:
            raise BenchmarkError(f"B3: the relay failed: {self._error!r}") from self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        try:
            if self._variant.wakeup:  # what `Relay.run` does, plus the listener `relay_from_settings` adds
                channel = OutboxSettings().notify_channel  # the channel the writers notify on
                RelayService(
                    SoleLease(),
                    lambda _: self._relay,
                    poll_interval=self._variant.poll_interval,
                    listener=Listener(self._engine, channel),
                ).run(self._stop.is_set)
            else:
                self._relay.run(self._stop.is_set, poll_interval=self._variant.poll_interval)
        except Exception as exc:  # noqa: BLE001 - handed to the benchmark's thread, which raises it
            self._error = exc


def _check(events: int, sent: Sequence[writers.Sent], seen: Sequence[tuple[int, float, str]]) -> None:
    """Refuse figures unless every scheduled event was committed and seen exactly once."""
    if sorted(s.seq for s in sent) != list(range(events)):
        raise BenchmarkError(f"B3: the writers committed {len(sent)} events of the {events} scheduled")
    check_exactly("B3", [str(s.seq) for s in sent], Counter(str(seq) for seq, _, _ in seen))
    if len({event_id for _, _, event_id in seen}) != len(seen):
        raise BenchmarkError("B3: an event id arrived twice under different schedule numbers")


def _latencies(
    variant: Variant,
    rate: float,
    sent: Sequence[writers.Sent],
    visible: dict[int, float],
    landed: dict[int, float],
) -> Latencies:
    commit = [1000 * (visible[s.seq] - s.committed) for s in sent]
    warehouse = [1000 * (landed[s.seq] - s.committed) for s in sent]
    first, last = min(s.due for s in sent), max(s.committed for s in sent)
    return Latencies(
        poll_interval=variant.poll_interval,
        wakeup=variant.wakeup,
        capture=variant.capture,
        offered=rate,
        achieved=len(sent) / (last - first),
        events=len(sent),
        commit_p50=percentile(commit, 0.50),
        commit_p95=percentile(commit, 0.95),
        commit_p99=percentile(commit, 0.99),
        commit_max=max(commit),
        warehouse_p50=percentile(warehouse, 0.50),
        warehouse_p99=percentile(warehouse, 0.99),
        due_p99=percentile([1000 * (visible[s.seq] - s.due) for s in sent], 0.99),
        lag_p99=percentile([1000 * (s.started - s.due) for s in sent], 0.99),
    )


def _report(
    results: list[LatencyResult], seconds: float, server: dict[str, str], kafka: dict[str, str]
) -> Report:
    rates = sorted({result.offered for result in results})
    writers_used = ", ".join(f"{writers.needed(rate)} at {rate:,.0f}/s" for rate in rates)
    notes = [
        f"Offered for {seconds:g} s each by open-loop writer processes ({writers_used}), one event per "
        "transaction (`outbox.publish` in an ORM Session); relay batch size 500, "
        f"{PARTITIONS}-partition topic. Cells: median over the repetitions (min-max); ratios: variant / "
        "baseline medians. 'due -> visible' counts from the time the schedule set, so a writer that fell "
        "behind cannot hide its delay.",
        "Highest sustainable offered rate (writers achieved >= "
        f"{SUSTAINED:.0%} of it, due -> visible p99 <= {SUSTAINED_P99_MS:,.0f} ms): {_sustainable(results)}.",
    ]
    tables = [_table([r for r in results if r.offered == rate], rate) for rate in rates]
    return Report(results, server, kafka, tables=tables, goals=_goals(results), notes=notes)


def _sustainable(results: list[LatencyResult]) -> str:
    labels = dict.fromkeys(result.label for result in results)
    best = {
        label: max((r.offered for r in results if r.label == label and r.sustained), default=None)
        for label in labels
    }
    return ", ".join(
        f"{label} {'none measured' if rate is None else f'{rate:,.0f} events/s'}"
        for label, rate in best.items()
    )


def _table(results: list[LatencyResult], rate: float) -> Table:
    """Figures down, variants across: the baseline, then each variant with its ratio to it — a wal
    variant's to its polling twin (the same waiting), when that was measured."""
    baseline, variants = results[0], results[1:]
    columns = [f"{NAME}, {rate:,.0f} events/s offered", f"{baseline.label} (baseline)"]
    twins = [_twin(v, results) for v in variants]
    references = [twin or baseline for twin in twins]
    for v, twin in zip(variants, twins, strict=True):
        columns += [v.label, "ratio to baseline" if twin is None else "wal / poll"]
    rows = []
    for figure, label, unit in FIGURES:
        row = [label, _cell(baseline, figure, unit)]
        for v, reference in zip(variants, references, strict=True):
            row += [_cell(v, figure, unit), _ratio(v.median(figure), reference.median(figure))]
        rows.append(tuple(row))
    return Table(tuple(columns), "l" + "r" * (len(columns) - 1), tuple(rows))


def _twin(result: LatencyResult, results: Sequence[LatencyResult]) -> LatencyResult | None:
    """The polling result a wal result is compared with: same waiting, same offered rate."""
    if result.capture != "wal":
        return None
    twin = result.variant.polling_twin
    return next((r for r in results if r.variant == twin and r.offered == result.offered), None)


def _cell(result: LatencyResult, figure: str, unit: str) -> str:
    values = [getattr(run, figure) for run in result.runs]
    digits = 0 if unit == "events/s" or result.median(figure) >= 10 else 1
    return f"{result.median(figure):,.{digits}f} {unit} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}" if baseline > 0 else "-"


def _goals(results: list[LatencyResult]) -> list[Goal]:
    """p99 commit -> visible <= 100 ms (the relay issue's), and <= 50 ms for wal (the WAL issue's,
    with its ratio to polling), judged only where at least 95 % of 1,000 events/s was achieved."""
    goals = []
    judged = [r for r in results if r.offered == GOAL_RATE] or results  # quick runs: their rate
    for result in judged:
        p99, achieved = result.median("commit_p99"), result.median("achieved")
        twin = _twin(result, judged)
        versus = f"; wal / poll {_ratio(p99, twin.median('commit_p99'))}" if twin is not None else ""
        measured = f"p99 {p99:,.0f} ms at {achieved:,.0f} events/s achieved{versus}"
        for goal_ms in (GOAL_P99_MS, WAL_GOAL_P99_MS) if result.capture == "wal" else (GOAL_P99_MS,):
            goals.append(
                Goal(
                    f"p99 commit -> visible <= {goal_ms:g} ms at {GOAL_RATE:,.0f} events/s",
                    result.label,
                    measured,
                    p99 <= goal_ms and achieved >= 0.95 * GOAL_RATE,
                )
            )
    return goals
