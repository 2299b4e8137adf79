"""B6's ways of moving jobs, and what the job broker (Redis) holds afterwards.

* `send_after_commit` / `enqueue_in_transaction`: the app transaction of B6's first part — a new
  `Session`, one order, commit — with the order's job sent by `actor.send()` after the commit, or
  written by `outbox.jobs.enqueue()` inside the transaction;
* `load`: a committed backlog of jobs in the outbox, written through `enqueue()` (untimed);
* `outboxkit`: that backlog drained by the relay and the jobs dispatcher running concurrently,
  until Redis holds every job;
* `ceiling`: the same messages, already in memory, put into Redis by a plain loop of
  `broker.enqueue(message)`: no database, no Kafka, no dispatcher.

The relay and the dispatcher run as **threads of this process**, as `outboxkit demo` runs them:
both are timed from one clock (the relay's first fetch to the moment Redis holds the last job)
and one CPU figure (`time.process_time()`) covers both, while their once-per-process start-up
(the relay's fencing, the dispatcher joining its consumer group) stays out of it. Threads share
the GIL, so the figure is a lower bound of two separate processes on free cores; on the 2-core
reference machine separate processes would compete with PostgreSQL, Kafka and Redis for the same
cores instead.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

import dramatiq
import redis
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr
from sqlalchemy import BigInteger, Engine, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bench.drain import Drained
from bench.report import BenchmarkError
from jobs.delivery import message_of
from jobs.dispatch import dispatcher_from_settings
from jobs.settings import JobsSettings
from outbox import SETTINGS_KEY, OutboxSettings, outbox_table
from outbox.jobs import enqueue
from relay import Relay
from runtime.kafka import KafkaSettings
from wire.jobs import Job

TIMEOUT: Final = 900.0  # seconds a drain may take before the run is declared broken
STALL: Final = 60.0  # seconds without a new job in Redis before a drain is declared stuck
LOAD_BATCH: Final = 1000  # jobs per loading transaction
POLL: Final = 0.01  # seconds between looks at the queue's length while the jobs flow


class Base(DeclarativeBase):
    """B6's own model, so its table is created in its scratch database only."""


class Order(Base):
    __tablename__ = "b6_orders"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    amount_cents: Mapped[int]


def confirm_order(order_id: int) -> None:
    """The job's actor. It never runs here: nothing consumes the benchmark's queues."""


def declare(broker: dramatiq.Broker, queue: str) -> dramatiq.Actor[Any, Any]:
    return dramatiq.actor(broker=broker, actor_name="b6_confirm_order", queue_name=queue)(confirm_order)


def send_after_commit(factory: sessionmaker[Any], actor: dramatiq.Actor[Any, Any]) -> None:
    """The baseline: commit the order, then `actor.send()` its job (lost if the process dies between)."""
    with factory.begin() as session:
        order = Order(customer="ada", amount_cents=1000)
        session.add(order)
        session.flush()  # the order's id, as in the outbox variant
        order_id = order.id  # read before the commit expires it
    actor.send(order_id=order_id)


def enqueue_in_transaction(factory: sessionmaker[Any], actor: dramatiq.Actor[Any, Any]) -> None:
    """The outbox variant: the job is an outbox row of the order's own transaction."""
    with factory.begin() as session:
        order = Order(customer="ada", amount_cents=1000)
        session.add(order)
        session.flush()
        enqueue(session, actor.message(order_id=order.id), broker=actor.broker)


def sessions(engine: Engine, jobs_topic: str) -> sessionmaker[Any]:
    return sessionmaker(engine, info={SETTINGS_KEY: OutboxSettings(jobs_topic=jobs_topic)})


def load(engine: Engine, actor: dramatiq.Actor[Any, Any], topic: str, queue: str, jobs: int) -> list[Job]:
    """Commit `jobs` jobs for `queue` on the jobs topic `topic` (untimed); the jobs as written."""
    factory = sessions(engine, topic)
    for first in range(0, jobs, LOAD_BATCH):
        with factory.begin() as session:
            for n in range(first, min(first + LOAD_BATCH, jobs)):
                enqueue(session, actor.message(order_id=n), broker=actor.broker, queue=queue)
    query = select(outbox_table.c.event_id, outbox_table.c.payload).order_by(outbox_table.c.id)
    with engine.connect() as conn:
        return [Job.from_payload(event_id, payload.encode()) for event_id, payload in conn.execute(query)]


class Queue:
    """One Dramatiq queue in Redis, read as the broker stores it: a hash of Redis message ids to
    encoded messages (`<namespace>:<queue>.msgs`) beside the list of ids waiting."""

    def __init__(self, client: redis.Redis, queue: str, namespace: str = "dramatiq") -> None:
        self._client, self._key = client, f"{namespace}:{queue}"

    def length(self) -> int:
        return int(self._client.hlen(f"{self._key}.msgs"))

    def message_ids(self) -> Counter[str]:
        """How often each Dramatiq message id is in the queue (each enqueue gets its own Redis id)."""
        values = self._client.hvals(f"{self._key}.msgs")
        return Counter(json.loads(value)["message_id"] for value in values)

    def waiting(self) -> int:
        return int(self._client.llen(self._key))

    def delete(self) -> None:
        self._client.delete(self._key, f"{self._key}.msgs")


def outboxkit(
    engine: Engine, kafka: KafkaSettings, redis_url: str, topics: tuple[str, str], *, queue: Queue, jobs: int
) -> Drained:
    """Drain the outbox's `jobs` jobs with the relay and the dispatcher, each in its thread, until
    `queue` holds `jobs` messages. `topics`: the jobs topic and the relay's checkpoint topic."""
    jobs_topic, checkpoints = topics
    relay = Relay.for_shard(engine, kafka, f"bench-b6-{uuid.uuid4().hex[:8]}", checkpoints)
    relay.start()
    group = f"outboxkit-bench-b6-{uuid.uuid4().hex[:8]}"
    settings = JobsSettings(
        _env_file=None, kafka=kafka, broker_url=SecretStr(redis_url), topic=jobs_topic, group_id=group
    )
    stop = threading.Event()
    dispatcher = _Thread("dispatcher", lambda: dispatcher_from_settings(settings).run(stop.is_set))
    dispatcher.start()
    _joined(kafka, group, dispatcher)
    deadline = time.monotonic() + TIMEOUT
    wall, cpu = time.perf_counter(), time.process_time()
    relaying = _Thread("relay", lambda: relay.run(lambda: time.monotonic() > deadline, drain=True))
    relaying.start()
    try:
        _until(_Filling(queue, jobs).full, deadline, (relaying, dispatcher), f"Redis to hold {jobs} jobs")
        result = Drained(jobs, time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        stop.set()
        relaying.join(60)
        dispatcher.join(60)
    for thread in (relaying, dispatcher):
        thread.check()
    return result


def ceiling(broker: dramatiq.Broker, messages: Sequence[dramatiq.Message[Any]]) -> Drained:
    """Put `messages` into the broker one `enqueue` at a time: the broker's own limit from one client."""
    wall, cpu = time.perf_counter(), time.process_time()
    for message in messages:
        broker.enqueue(message)
    return Drained(len(messages), time.perf_counter() - wall, time.process_time() - cpu)


def messages_of(jobs: Sequence[Job], queue: str) -> list[dramatiq.Message[Any]]:
    """The Dramatiq messages the dispatcher would deliver for `jobs`, addressed to `queue` (untimed)."""
    return [message_of(job).copy(queue_name=queue) for job in jobs]


class _Filling:
    """`full()` once the queue holds `jobs` messages; `BenchmarkError` if it stops growing short of
    that (jobs lost on the way would otherwise be waited for until `TIMEOUT`)."""

    def __init__(self, queue: Queue, jobs: int) -> None:
        self._queue, self._jobs = queue, jobs
        self._held, self._since = 0, time.monotonic()

    def full(self) -> bool:
        held = self._queue.length()
        if held != self._held:
            self._held, self._since = held, time.monotonic()
        elif time.monotonic() - self._since > STALL:
            raise BenchmarkError(f"B6: Redis has held {held} of the {self._jobs} jobs for {STALL:.0f} s")
        return held >= self._jobs


class _Thread(threading.Thread):
    """A service loop in a thread; what it raised is re-raised by `check()` in the main thread."""

    def __init__(self, name: str, loop: Callable[[], object]) -> None:
        super().__init__(name=f"b6-{name}", daemon=True)
        self._loop = loop
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by check()
            self.failure = exc

    def check(self) -> None:
        if self.failure is not None:
            raise BenchmarkError(f"B6: the {self.name} failed: {self.failure}") from self.failure


def _joined(kafka: KafkaSettings, group: str, dispatcher: _Thread) -> None:
    """Wait until the dispatcher's consumer group is stable with partitions assigned: joining a new
    group (~3 s: Kafka's initial rebalance delay) is a once-per-process cost, kept out of the figure."""
    admin = AdminClient(kafka.client_config())
    deadline = time.monotonic() + 120

    def assigned() -> bool:
        found = admin.describe_consumer_groups([group])[group].result(10)
        return any(member.assignment.topic_partitions for member in found.members)

    _until(assigned, deadline, (dispatcher,), "the dispatcher to join its consumer group", pause=0.1)


def _until(
    done: Callable[[], bool],
    deadline: float,
    threads: Sequence[_Thread],
    what: str,
    *,
    pause: float = POLL,
) -> None:
    while not done():
        for thread in threads:
            thread.check()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"B6: gave up waiting for {what}")
        time.sleep(pause)
