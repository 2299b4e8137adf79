"""`outboxkit jobs dispatch` as a real process: the jobs topic (written transactionally, as the relay
writes it) into real Redis, read back from Redis itself.

What it guarantees: every job reaches the broker, none is lost whatever the dispatcher or the
broker does; a SIGTERM commits what was delivered (a restart delivers nothing twice); a SIGKILL
between the broker's accept and the offset commit delivers that batch again (the duplicates the
worker's inbox absorbs); a record that is not a job stops it, after everything before it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
import redis
from confluent_kafka import Producer

from jobs.delivery import broker_from_url
from jobs.dispatch import watch_dead_letters
from runtime.kafka import KafkaSettings
from runtime.observe import Metrics
from tests.processes import ROOT, free_port, get, metric, wait_until, wait_until_probe
from wire import Envelope
from wire.jobs import JOB_AGGREGATE_TYPE, JOB_EVENT_TYPE, Job


def job_envelope(topic: str, queue: str, n: int) -> Envelope:
    """A job as the relay publishes it: key, aggregate id and event id all the message id."""
    job = Job(str(uuid.uuid4()), queue, "send_email", [n], {"order_id": n}, {}, 1_700_000_000_000)
    return Envelope(
        event_id=job.message_id,
        topic=topic,
        key=job.message_id.encode(),
        payload=json.dumps(job.to_payload()).encode(),
        event_type=JOB_EVENT_TYPE,
        aggregate_type=JOB_AGGREGATE_TYPE,
        aggregate_id=job.message_id,
    )


def produce_in_a_transaction(kafka: KafkaSettings, topic: str, records: Sequence[Envelope]) -> None:
    producer = Producer(kafka.client_config({"transactional.id": f"test-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for record in records:
        producer.produce(topic, record.payload, record.key, headers=record.kafka_headers())
    producer.commit_transaction(30)


@dataclass
class Dispatcher:
    """The dispatcher's settings for one test: its topic, group, broker and queue of its own."""

    kafka: KafkaSettings
    topic: str
    group: str
    broker_url: str
    queue: str

    def jobs(self, count: int) -> list[Envelope]:
        records = [job_envelope(self.topic, self.queue, n) for n in range(count)]
        produce_in_a_transaction(self.kafka, self.topic, records)
        return records

    def env(self, **more: str) -> dict[str, str]:
        return os.environ | {
            "OUTBOXKIT_JOBS_BROKER_URL": self.broker_url,
            "OUTBOXKIT_JOBS_TOPIC": self.topic,
            "OUTBOXKIT_JOBS_GROUP_ID": self.group,
            "OUTBOXKIT_JOBS_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "OUTBOXKIT_JOBS_BATCH_SIZE": "20",
            "OUTBOXKIT_JOBS_POLL_TIMEOUT": "0.2",
            "OUTBOXKIT_JOBS_MAX_BACKOFF": "0.5",
            # a killed member holds its partitions until its session expires: keep that short here
            "OUTBOXKIT_JOBS_KAFKA__CONFIG": json.dumps(
                {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
            ),
            **more,
        }

    def start(self, *command: str, **more: str) -> subprocess.Popen[str]:
        args = command or ("-m", "outboxkit.cli", "--log-level", "WARNING", "jobs", "dispatch")
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env(**more),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outboxkit.cli", "--log-level", "WARNING", "jobs", *args],
            cwd=ROOT,
            env=self.env(**more),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def drain(self) -> str:
        done = self.run("dispatch", "--drain")
        assert done.returncode == 0, done.stderr
        return done.stderr

    def status(self) -> dict[str, object]:
        done = self.run("status", "--json", "--queue", self.queue)
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    def delivered(self) -> Counter[str]:
        """Message id -> how many times the broker holds it (each enqueue is an entry of its own)."""
        client = redis.Redis.from_url(self.broker_url)
        try:
            entries = client.hvals(f"dramatiq:{self.queue}.msgs")
        finally:
            client.close()
        return Counter(dramatiq.Message.decode(entry).message_id for entry in entries)


@pytest.fixture
def dispatcher(
    kafka: KafkaSettings, new_topic: Callable[..., str], unique_name: Callable[[str], str], redis_url: str
) -> Dispatcher:
    return Dispatcher(kafka, new_topic(2), unique_name("g"), redis_url, unique_name("q"))


def ids(records: Sequence[Envelope]) -> set[str]:
    return {record.event_id for record in records}


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return stderr


def summary(stderr: str) -> int:
    """Jobs dispatched, from the line `outboxkit jobs dispatch` prints when it stops."""
    [line] = [line for line in stderr.splitlines() if line.startswith("outboxkit jobs:")]
    return int(line.split()[2])


def test_every_job_arrives_once_and_sigterm_commits_what_was_delivered(dispatcher: Dispatcher) -> None:
    produced = dispatcher.jobs(100)
    running = dispatcher.start()
    try:
        wait_until(lambda: sum(dispatcher.delivered().values()) >= 100, timeout=120)
    finally:
        stderr = stop(running)

    assert summary(stderr) == 100
    assert dispatcher.delivered() == Counter(ids(produced))  # each once
    assert summary(dispatcher.drain()) == 0  # the offsets were committed: nothing delivered again
    assert dispatcher.delivered() == Counter(ids(produced))
    report = dispatcher.status()
    assert report["lag"] == 0
    assert report["queues"] == {dispatcher.queue: 100}


def test_a_sigkill_after_the_broker_accepted_and_before_the_commit_delivers_that_batch_again(
    dispatcher: Dispatcher,
) -> None:
    produced = dispatcher.jobs(100)

    crashing = dispatcher.start("-m", "tests.crashing_dispatcher", "3")
    assert crashing.wait(120) == -signal.SIGKILL, crashing.communicate()[1]
    before = sum(dispatcher.delivered().values())
    dispatcher.drain()

    delivered = dispatcher.delivered()
    assert set(delivered) == ids(produced)  # nothing lost
    duplicates = sum(delivered.values()) - len(produced)
    assert duplicates > 0, "the batch the broker accepted before the crash was not delivered again"
    assert duplicates <= before  # only what was delivered before the crash came twice


def test_a_record_that_is_not_a_job_stops_the_dispatcher_after_everything_before_it(
    dispatcher: Dispatcher, kafka: KafkaSettings, new_topic: Callable[..., str]
) -> None:
    dispatcher.topic = new_topic(1)
    before = [job_envelope(dispatcher.topic, dispatcher.queue, n) for n in range(10)]
    bad = Envelope(
        event_id=str(uuid.uuid4()),
        topic=dispatcher.topic,
        key=b"k",
        payload=b'{"n": 1}',
        event_type="OrderPlaced",
        aggregate_type="order",
        aggregate_id="k",
    )
    after = [job_envelope(dispatcher.topic, dispatcher.queue, n) for n in range(5)]
    produce_in_a_transaction(kafka, dispatcher.topic, [*before, bad, *after])

    done = dispatcher.run("dispatch")

    assert done.returncode == 1, done.stderr
    assert f"{dispatcher.topic}[0]@10 is not a job" in done.stderr
    assert "--to-offset 11" in done.stderr  # what to do next
    assert dispatcher.delivered() == Counter(ids(before))
    [stopped_at] = dispatcher.status()["partitions"]  # type: ignore[misc]
    assert stopped_at["committed"] == 10  # everything before it committed; the record stays in Kafka


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[bool], None]]:
    """A redis-server of this test's own on a free port (fsyncing every write, as the shared one),
    and a switch to start or stop it: the shared Redis is never touched."""
    port = free_port()
    server: list[subprocess.Popen[bytes]] = []

    def switch(on: bool) -> None:
        if on:
            server.append(
                subprocess.Popen(
                    [
                        *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
                        *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            wait_until(lambda: redis.Redis(port=port).ping(), timeout=30)  # type: ignore[no-any-return]
        else:
            server[-1].terminate()
            server[-1].wait(30)

    switch.port = port  # type: ignore[attr-defined]
    yield switch
    if server and server[-1].poll() is None:
        switch(False)


def test_a_broker_outage_is_ridden_out_and_nothing_is_lost(
    dispatcher: Dispatcher, private_redis: Callable[[bool], None]
) -> None:
    private_redis(True)
    dispatcher.broker_url = f"redis://127.0.0.1:{private_redis.port}/0"  # type: ignore[attr-defined]
    http = free_port()
    produced = dispatcher.jobs(40)
    running = dispatcher.start(OUTBOXKIT_JOBS_HTTP_PORT=str(http))
    try:
        wait_until(lambda: sum(dispatcher.delivered().values()) >= 40, timeout=120)
        private_redis(False)
        produced += dispatcher.jobs(40)
        body = wait_until_probe(http, "/readyz", 503)
        assert "job broker" in body
        assert get(http, "/healthz")[0] == 200  # live: it waits, it is not stuck
        wait_until(lambda: metric(get(http, "/metrics")[1], "outboxkit_jobs_delivery_failures_total") > 0)
        private_redis(True)
        wait_until_probe(http, "/readyz", 200)
        wait_until(lambda: set(dispatcher.delivered()) >= ids(produced), timeout=120)
    finally:
        stderr = stop(running)

    assert set(dispatcher.delivered()) == ids(produced)
    assert "retrying" in stderr


def test_a_broker_url_of_no_broker_is_refused_naming_its_setting(dispatcher: Dispatcher) -> None:
    done = dispatcher.run("dispatch", OUTBOXKIT_JOBS_BROKER_URL="https://user:secret@example.com/")

    assert done.returncode == 2
    assert "OUTBOXKIT_JOBS_BROKER_URL: the scheme 'https' names no job broker" in done.stderr
    assert "secret" not in done.stderr


def dead_letter_one(broker_url: str, queue: str) -> str:
    """Dead-letter one message of `queue` the way a worker does once its retries run out (Dramatiq's
    consumer nacks it, the broker moves it to the queue's dead-letter queue); ack the others."""
    broker = broker_from_url(broker_url, middleware=[])
    consumer = broker.consume(queue, prefetch=10, timeout=1000)
    try:
        taken: list[dramatiq.broker.MessageProxy] = []
        while len(taken) < 3:
            message = next(consumer)
            if message is not None:
                taken.append(message)
        consumer.nack(taken[0])
        for message in taken[1:]:
            consumer.ack(message)
        return str(taken[0].message_id)
    finally:
        consumer.close()
        broker.close()


def test_a_dead_letter_shows_in_status_and_metrics_and_a_replay_puts_it_back_on_its_queue(
    dispatcher: Dispatcher,
) -> None:
    dispatcher.jobs(3)
    assert summary(dispatcher.drain()) == 3
    dead = dead_letter_one(dispatcher.broker_url, dispatcher.queue)

    report = dispatcher.status()
    assert report["dead_letters"] == {dispatcher.queue: 1}
    assert report["queues"] == {dispatcher.queue: 0}
    text = dispatcher.run("status", "--queue", dispatcher.queue).stdout
    assert (
        f"1 dead letter(s) (fix the cause, then `outboxkit jobs replay --queue {dispatcher.queue}`)" in text
    )
    metrics = Metrics()
    watch_dead_letters(metrics, broker_from_url(dispatcher.broker_url, middleware=[]), [dispatcher.queue])
    assert "outboxkit_jobs_dead_letters 1.0" in metrics.render()

    replayed = dispatcher.run("replay", "--queue", dispatcher.queue)
    assert replayed.returncode == 0, replayed.stderr
    assert f"1 dead letter(s) of queue {dispatcher.queue} back on the queue" in replayed.stderr
    report = dispatcher.status()
    assert report["dead_letters"] == {dispatcher.queue: 0}
    assert report["queues"] == {dispatcher.queue: 1}
    assert "outboxkit_jobs_dead_letters 0.0" in metrics.render()
    assert dispatcher.delivered()[dead] >= 1
