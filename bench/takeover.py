"""The takeover gap: how long consumers see nothing when the relay holding every shard is killed
and a standby takes its shards over. `python -m bench.takeover [--shards 4] [--reps 3]`.

Two `outboxkit relay run` processes with default settings but `OUTBOXKIT_RELAY_SHARDS` share a
PostgreSQL outbox: the first holds every shard, the second stands by. A writer commits one event
every 20 ms throughout; a read_committed consumer notes when each record arrives. The holder is
SIGKILLed, and the figure is the longest silence at the consumer after the kill — the time the
standby needs to notice the free leases, start a producer per shard (fencing the dead one's
transactional ids, reading back each checkpoint) and commit again. Not part of `make bench`: it
measures a recovery, not a rate, and the suite's handover test bounds it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

import outbox
from bench.kafka import read_committed_consumer, run_topics
from bench.pg import Endpoints, scratch_database
from outbox import Event, OutboxSettings, publish
from relay.leases import holders

INTERVAL = 0.02  # seconds between the writer's commits
STEADY = 3.0  # seconds of normal publishing before the kill, and at least as long after the gap


class Tick(Event, aggregate_type="tick", key="n"):
    n: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    gaps = [_one(Endpoints(), args.shards) for _ in range(args.reps)]
    print(f"takeover of {args.shards} shards: gaps {', '.join(f'{g:.2f}' for g in gaps)} s; "
          f"median {statistics.median(gaps):.2f} s")  # fmt: skip


def _one(endpoints: Endpoints, shards: int) -> float:
    with scratch_database(endpoints.pg_url) as url, run_topics(endpoints.kafka, "bench.takeover") as topics:
        app = create_engine(url)
        outbox.metadata.create_all(app)
        topic = topics.new("ticks", partitions=shards)
        env = os.environ | {
            "OUTBOXKIT_RELAY_DATABASE_URL": url.render_as_string(hide_password=False),
            "OUTBOXKIT_RELAY_SOURCE_ID": f"takeover-{uuid.uuid4().hex[:8]}",
            "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": topics.checkpoints,
            "OUTBOXKIT_RELAY_SHARDS": str(shards),
            "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap,
        }
        with _relay(env) as holder:
            _wait_for_holders(app, env["OUTBOXKIT_RELAY_SOURCE_ID"], shards)
            consumer = read_committed_consumer(endpoints.kafka)
            with _relay(env), _arrivals(consumer, topic, shards) as arrived, _writing(app, topic):
                time.sleep(STEADY)
                holder.kill()
                killed = time.monotonic()
                deadline = killed + 60
                while arrived[-1] < killed + STEADY and time.monotonic() < deadline:
                    time.sleep(0.1)  # until publishing has gone on for a while after the kill
        app.dispose()
    if arrived[-1] < killed:
        raise SystemExit("nothing was published in the minute after the kill")
    after = sorted([killed, *(t for t in arrived if t > killed - 1.0)])
    return max(b - a for a, b in itertools.pairwise(after))


@contextmanager
def _relay(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "outboxkit.cli", "--log-level", "WARNING", "relay", "run"]
    process = subprocess.Popen(command, env=env)  # noqa: S603 - our own command line
    try:
        yield process
    finally:
        process.kill()
        process.wait(30)


def _wait_for_holders(app: Engine, source_id: str, shards: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with app.connect() as conn:
            if len(holders(conn, source_id)) == shards:
                return
        time.sleep(0.1)
    raise SystemExit(f"the first relay did not take all {shards} shards within 60 s")


@contextmanager
def _writing(app: Engine, topic: str) -> Iterator[None]:
    stop = threading.Event()

    def write() -> None:
        settings = OutboxSettings(topic_template=topic, notify_channel="outboxkit")
        n = 0
        while not stop.wait(INTERVAL):
            with Session(app, info={outbox.SETTINGS_KEY: settings}) as session:
                publish(session, Tick(n=n))
                session.commit()
            n += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


@contextmanager
def _arrivals(consumer: Consumer, topic: str, partitions: int) -> Iterator[list[float]]:
    """The monotonic times committed records of `topic` reach a consumer, as they come."""
    arrived: list[float] = [time.monotonic()]
    stop = threading.Event()

    def consume() -> None:
        consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
        while not stop.is_set():
            arrived.extend(time.monotonic() for m in consumer.consume(1000, 0.05) if m.error() is None)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        yield arrived
    finally:
        stop.set()
        reader.join()
        consumer.close()


if __name__ == "__main__":
    main()
