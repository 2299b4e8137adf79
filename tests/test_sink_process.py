"""The sink as the process it is: SIGKILLed at any point of a batch, its warehouse taken away,
and sharing a consumer group while partitions move between instances.

`outboxkit sink run` runs as an OS process against the real broker and warehouse; the outcome is
compared with what the produced events must give, computed here independently of the sink.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, make_url, text

from runtime.kafka import KafkaSettings
from tests.processes import (
    ROOT,
    Forwarder,
    free_port,
    get,
    probes_until,
    stopped,
    wait_until,
    wait_until_probe,
)
from tests.sinkkit import T0, message, publish

Names = Callable[[str], str]
TABLES = [
    {"topic": "", "table": "state", "mode": "upsert"},
    {"topic": "", "table": "log", "mode": "append"},
    {"topic": "", "table": "versions", "mode": "history"},
]


@dataclass(frozen=True)
class Event:
    key: str
    version: int
    n: int
    deleted: bool
    at_ms: int
    event_id: str


def events(count: int, keys: int = 25) -> list[Event]:
    """Updates to `keys` aggregates, every 7th change of an aggregate a delete (then re-created)."""
    made, versions = [], dict.fromkeys(range(keys), 0)
    for i in range(count):
        k = i % keys
        versions[k] += 1
        made.append(Event(f"k{k}", versions[k], i, versions[k] % 7 == 0, T0 + 1000 * i, f"e{i}"))
    return made


def produce(
    kafka: KafkaSettings,
    topic: str,
    batch: Sequence[Event],
    partitions: int = 2,
    transactional_id: str | None = None,
) -> None:
    publish(
        kafka,
        [
            message(
                topic,
                e.n,
                key=e.key,
                payload={"n": e.n},
                version=e.version,
                event_type="ThingDeleted" if e.deleted else "ThingUpdated",
                event_id=e.event_id,
                at_ms=e.at_ms,
                partition=int(e.key[1:]) % partitions,
            )
            for e in batch
        ],
        transactional_id=transactional_id,
    )


def expected(produced: Sequence[Event]) -> dict[str, Any]:
    """The three tables as a sink that never crashed must leave them."""
    last: dict[str, Event] = {}
    validity: dict[tuple[str, int], list[int | None]] = {}  # (key, version) -> [from, to]
    open_rows: dict[str, tuple[str, int]] = {}
    for e in produced:
        if e.key in open_rows:  # a new version or a delete ends the open one
            validity[open_rows.pop(e.key)][1] = e.at_ms
        if not e.deleted:
            validity[(e.key, e.version)] = [e.at_ms, None]
            open_rows[e.key] = (e.key, e.version)
        last[e.key] = e
    return {
        "state": sorted((e.key, e.n, e.version) for e in last.values() if not e.deleted),
        "log": sorted(e.event_id for e in produced),
        "versions": sorted((key, version, start, end) for (key, version), (start, end) in validity.items()),
    }


def found(url: str) -> dict[str, Any]:
    engine = create_engine(url)

    def millis(t: datetime.datetime | None) -> int | None:
        return None if t is None else int(t.timestamp() * 1000)

    try:
        with engine.connect() as conn:
            return {
                "state": sorted(tuple(r) for r in conn.execute(text("SELECT _key, n, _version FROM state"))),
                "log": sorted(r[0] for r in conn.execute(text("SELECT _event_id FROM log"))),
                "versions": sorted(
                    (
                        (k, v, millis(f), millis(t))
                        for k, v, f, t in conn.execute(
                            text("SELECT _key, _version, _valid_from, _valid_to FROM versions")
                        )
                    ),
                ),
            }
    finally:
        engine.dispose()


@dataclass
class SinkProcess:
    """`outboxkit sink run` (or the crashing variant) with its settings in the environment."""

    kafka: KafkaSettings
    url: str
    topic: str
    group: str

    def env(self, **more: str) -> dict[str, str]:
        return os.environ | {
            "OUTBOXKIT_SINK_WAREHOUSE_URL": self.url,
            "OUTBOXKIT_SINK_GROUP_ID": self.group,
            "OUTBOXKIT_SINK_TABLES": json.dumps([t | {"topic": self.topic} for t in TABLES]),
            "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "OUTBOXKIT_SINK_BATCH_SIZE": "40",
            "OUTBOXKIT_SINK_POLL_TIMEOUT": "0.2",
            "OUTBOXKIT_SINK_MAX_BACKOFF": "1",
            # a killed member holds its partitions until its session expires: keep that short here
            "OUTBOXKIT_SINK_KAFKA__CONFIG": json.dumps(
                {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
            ),
            **more,
        }

    def start(self, *command: str, log: Path | None = None, **more: str) -> subprocess.Popen[str]:
        """The sink as a process, `more` settings added; its log written to `log` if given."""
        args = command or ("-m", "outboxkit.cli", "--log-level", "INFO" if log else "WARNING", "sink", "run")
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env(**more),
            stdout=subprocess.PIPE,
            stderr=log.open("w") if log else subprocess.PIPE,
            text=True,
        )

    def drain(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "outboxkit.cli", "--log-level", "WARNING", "sink", "run", "--drain"],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr


@pytest.fixture
def process(
    kafka: KafkaSettings, new_topic: Callable[..., str], warehouse_url: str, unique_name: Names
) -> SinkProcess:
    return SinkProcess(kafka, warehouse_url, new_topic(2), unique_name("g"))


@pytest.mark.parametrize("warehouse_url", ["duckdb", "postgresql", "ducklake+postgresql"], indirect=True)
@pytest.mark.parametrize("point", ["before-write", "before-commit", "after-commit"])
def test_a_sink_killed_at_any_point_of_a_batch_restarts_as_if_it_had_never_crashed(
    kafka: KafkaSettings, process: SinkProcess, point: str
) -> None:
    produced = events(300)
    produce(kafka, process.topic, produced)

    crashing = process.start("-m", "tests.crashing_sink", point, "3")
    assert crashing.wait(120) == -signal.SIGKILL, crashing.communicate()[1]
    process.drain()

    assert found(process.url) == expected(produced)


def summary(stderr: str) -> tuple[int, int]:
    """(applied, skipped) from the line `outboxkit sink run` prints when it stops."""
    [line] = [line for line in stderr.splitlines() if line.startswith("outboxkit sink:")]
    words = line.split()
    return int(words[2]), int(words[4])


def wait_for(url: str, table: str, rows: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            engine = create_engine(url)
            with engine.connect() as conn:
                if conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() >= rows:
                    return
        except Exception:
            pass
        finally:
            engine.dispose()
        assert time.monotonic() < deadline, f"{table} has fewer than {rows} rows after {timeout:.0f}s"
        time.sleep(0.3)


def stop(sink: subprocess.Popen[str]) -> str:
    sink.send_signal(signal.SIGTERM)
    _, stderr = sink.communicate(timeout=60)
    assert sink.returncode == 0, stderr
    return stderr


@pytest.mark.parametrize("warehouse_url", ["postgresql"], indirect=True)
def test_postgresql_restarted_under_a_running_sink_loses_and_repeats_nothing(
    kafka: KafkaSettings, process: SinkProcess
) -> None:
    produced = events(300)
    produce(kafka, process.topic, produced[:100])
    sink = process.start()
    try:
        wait_for(process.url, "log", 100)
        with stopped("postgres"):
            produce(kafka, process.topic, produced[100:])
            time.sleep(3)
    finally:
        wait_for(process.url, "log", 300)
        stderr = stop(sink)

    assert found(process.url) == expected(produced)
    assert summary(stderr) == (900, 0)
    assert "the same batch is retried" in stderr


@pytest.mark.parametrize(
    ("warehouse_url", "leave"),
    [("postgresql", signal.SIGTERM), ("ducklake+postgresql", signal.SIGKILL)],
    indirect=["warehouse_url"],
)
def test_two_sinks_in_one_group_apply_every_event_once_while_partitions_move(
    kafka: KafkaSettings, kafka_topic_4: str, process: SinkProcess, leave: signal.Signals
) -> None:
    """Killed (SIGKILL), the first sink reports nothing: every event is still applied once, the
    second skipping none (what the first committed, it committed with its offsets)."""
    process.topic = kafka_topic_4
    produced = events(1200, keys=40)
    producer = threading.Thread(target=trickle, args=(kafka, process.topic, produced))
    producer.start()
    first = process.start()
    time.sleep(3)
    second = process.start()  # a rebalance: partitions move from the first to the second
    time.sleep(3)
    first.send_signal(leave)  # and another: the first leaves, mid-stream
    _, first_err = first.communicate(timeout=60)
    producer.join()
    wait_for(process.url, "log", len(produced))
    second_err = stop(second)

    assert found(process.url) == expected(produced)
    assert summary(second_err)[0] > 0
    if leave == signal.SIGKILL:
        assert summary(second_err)[1] == 0
        return
    assert first.returncode == 0, first_err
    applied, skipped = (sum(pair) for pair in zip(summary(first_err), summary(second_err), strict=True))
    assert (applied, skipped) == (3 * len(produced), 0)  # each event applied once to each table
    assert summary(first_err)[0] > 0


def trickle(kafka: KafkaSettings, topic: str, produced: Sequence[Event]) -> None:
    """Produce over about eight seconds, so the rebalances happen mid-stream."""
    for i in range(0, len(produced), 60):
        produce(kafka, topic, produced[i : i + 60], partitions=4)
        time.sleep(0.4)


@pytest.fixture
def kafka_topic_4(new_topic: Callable[..., str]) -> str:
    return new_topic(4)


def behind(process: SinkProcess, forwarder: Forwarder) -> SinkProcess:
    """`process` with its PostgreSQL warehouse reached through `forwarder`."""
    url = make_url(process.url).set(port=forwarder.port)
    return replace(process, url=url.render_as_string(hide_password=False))


def postgres_forwarder(process: SinkProcess) -> Forwarder:
    url = make_url(process.url)
    return Forwarder((url.host or "127.0.0.1", url.port or 5432))


@pytest.mark.parametrize("warehouse_url", ["postgresql"], indirect=True)
def test_a_sink_started_while_postgresql_is_away_waits_live_and_not_ready_then_proceeds(
    kafka: KafkaSettings, process: SinkProcess
) -> None:
    produced = events(100)
    produce(kafka, process.topic, produced)
    postgres_later, port = postgres_forwarder(process), free_port()
    sink = behind(process, postgres_later).start(
        OUTBOXKIT_SINK_HTTP_PORT=str(port), OUTBOXKIT_SINK_START_TIMEOUT="0"
    )
    try:
        wait_until_probe(port, "/healthz", 200, timeout=30)  # served while it waits
        assert wait_until_probe(port, "/readyz", 503).startswith("not ready: ")
        time.sleep(3)
        assert sink.poll() is None, f"the sink did not wait for PostgreSQL: {sink.communicate()[1]}"
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/readyz")[0] == 503
        postgres_later.open()
        wait_for(process.url, "log", 100)
        wait_until_probe(port, "/readyz", 200)
    finally:
        stderr = stop(sink)
        postgres_later.close()

    assert found(process.url) == expected(produced)
    assert "preparing the warehouse failed" in stderr


def logged(log: Path, text_: str, times: int = 1) -> Callable[[], bool]:
    return lambda: log.read_text().count(text_) >= times


def test_a_sink_without_kafka_is_live_and_not_ready(process: SinkProcess, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "sink.log"
    sink = process.start(
        log=log,
        OUTBOXKIT_SINK_HTTP_PORT=str(port),
        OUTBOXKIT_SINK_START_TIMEOUT="0",
        OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    try:
        wait_until_probe(port, "/healthz", 200, timeout=30)
        seen = probes_until(port, logged(log, "reaching Kafka failed", 2))
        body = get(port, "/readyz")[1]
    finally:
        sink.kill()
        sink.wait(10)
    assert {liveness for liveness, _ in seen} == {200}, seen
    assert {readiness for _, readiness in seen} == {503}, seen
    assert "Kafka" in body, body


@pytest.mark.parametrize("warehouse_url", ["postgresql"], indirect=True)
def test_a_running_sink_is_not_ready_while_its_warehouse_is_down_even_with_nothing_to_write(
    kafka: KafkaSettings, process: SinkProcess
) -> None:
    produced = events(100)
    produce(kafka, process.topic, produced)
    warehouse, port = postgres_forwarder(process), free_port()
    warehouse.open()
    sink = behind(process, warehouse).start(OUTBOXKIT_SINK_HTTP_PORT=str(port))
    try:
        wait_for(process.url, "log", 100)
        wait_until_probe(port, "/readyz", 200)
        warehouse.close()  # idle: no batch would notice
        assert "warehouse" in wait_until_probe(port, "/readyz", 503, timeout=30)
        assert get(port, "/healthz")[0] == 200
        warehouse.open()
        wait_until_probe(port, "/readyz", 200)
    finally:
        stop(sink)
        warehouse.close()


def group_offsets(kafka: KafkaSettings, group: str) -> dict[int, int]:
    """Partition -> offset committed to `group`, read with Kafka's admin API."""
    admin = AdminClient(kafka.client_config())
    [future] = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]).values()
    return {tp.partition: tp.offset for tp in future.result(timeout=30).topic_partitions}


def ends(kafka: KafkaSettings, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer(kafka.client_config({"group.id": "ends"}))
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def test_the_sinks_consumer_group_shows_its_stored_offsets_and_lag_zero_after_a_drain(
    kafka: KafkaSettings, process: SinkProcess, unique_name: Names
) -> None:
    produced = events(100)
    for i in range(0, 100, 25):  # as the relay publishes: each transaction ends with a marker
        produce(kafka, process.topic, produced[i : i + 25], transactional_id=unique_name("tx"))
    process.drain()
    shown = group_offsets(kafka, process.group)
    assert shown == ends(kafka, process.topic, 2)  # lag 0, though the ends are transaction markers
    assert found(process.url) == expected(produced)


@pytest.mark.parametrize("warehouse_url", ["postgresql"], indirect=True)
def test_a_sink_restarted_under_its_static_member_id_moves_no_partition_of_the_other(
    kafka: KafkaSettings, kafka_topic_4: str, process: SinkProcess, tmp_path: Path
) -> None:
    process.topic = kafka_topic_4
    # A static member's partitions wait for it this long: longer than its restart takes.
    config = json.dumps({"session.timeout.ms": "30000", "heartbeat.interval.ms": "500"})
    logs = [tmp_path / "one.log", tmp_path / "other.log"]

    def start(member: int) -> subprocess.Popen[str]:
        return process.start(
            log=logs[member],
            OUTBOXKIT_SINK_GROUP_INSTANCE_ID=f"sink-{member}",
            OUTBOXKIT_SINK_KAFKA__CONFIG=config,
        )

    one, other = start(0), start(1)
    try:
        produce(kafka, process.topic, events(200, keys=40), partitions=4)
        wait_for(process.url, "log", 200)
        wait_until(lambda: all(" assigned [(" in log.read_text() for log in logs))
        settled = logs[1].read_text().count(" assigned ")
        stop(one)
        one = start(0)  # the same member id: it takes its partitions back, the other keeps its own
        wait_until(logged(logs[0], " assigned [("))
        produce(kafka, process.topic, events(400, keys=40)[200:], partitions=4)
        wait_for(process.url, "log", 400)  # every partition, the restarted one's too, applied
    finally:
        stop(one)
        stop(other)
    assert logs[1].read_text().count(" assigned ") == settled, logs[1].read_text()[-3000:]
