"""Background jobs end to end (issue 14's acceptance), every piece a real process on real services:

    this test (the app) -- enqueue --> PostgreSQL outbox -- `outboxkit relay run` --> Kafka
    -- `outboxkit jobs dispatch` --> Redis -- `python -m dramatiq tests.jobs_app` --> effects

The workers' `effects` table has no unique constraint on the message id, so a job that took effect
twice shows as two rows; `deliveries` counts what the broker handed the workers, duplicates
included (tests/jobs_app.py). Each test waits until its targets are met, up to a generous cap
(`jobs_stack.CAP`): a slow machine makes it longer, never red. Harness: tests/jobs_stack.py.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from itertools import cycle
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, make_url

from jobs.dead_letters import dead_letter_queues
from runtime.kafka import KafkaSettings
from tests.conftest import PgSchema
from tests.helpers import committed_event_ids
from tests.jobs_app_tables import FAILS_UNTIL_FIXED, MAX_RETRIES, RECORD_EFFECT, fixed, released
from tests.jobs_stack import (
    CAP,
    Child,
    JobsStack,
    PrivateRedis,
    assert_once_each,
    create_tables,
    forget_queue,
    mark,
    redis_broker,
)
from tests.otlp import Collector
from tests.processes import free_port, metric, wait_until_probe

JOBS = 2_000
PER_TRANSACTION = 50
KILL_EVERY = 4  # transactions: 10 SIGKILLs, 5 of the relay and 5 of the dispatchers
KILLS = 5  # of the relay and of the dispatchers each


@pytest.fixture
def make_stack(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[[str], JobsStack]]:
    """A stack on a job broker at the given URL; its processes stopped, its keys deleted after."""
    made: list[JobsStack] = []

    def make(broker_url: str) -> JobsStack:
        url = make_url(pg_schema.url).update_query_dict(pg_schema.connect_args)
        engine = create_engine(url, pool_pre_ping=True)
        create_tables(engine)
        queue = unique_name("q").replace("-", "_")
        stack = JobsStack(
            engine, url.render_as_string(False), kafka, new_topic(3), queue, broker_url, tmp_path, unique_name
        )
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop_all()
        stack.engine.dispose()


@pytest.fixture
def stack(make_stack: Callable[[str], JobsStack], redis_url: str) -> Iterator[JobsStack]:
    """A stack on the shared Redis, the test's keys deleted from it after."""
    made = make_stack(redis_url)
    yield made
    made.stop_all()
    forget_queue(redis_url, made.queue)


WORK = {"relay": "outboxkit_relay_published_total", "dispatcher": "outboxkit_jobs_dispatched_total"}


def at_work(child: Child) -> float:
    """What the relay published or the dispatcher dispatched since it (re)started."""
    return child.counted(WORK[child.name.rsplit("-", 1)[0]])


def has_worked(child: Child) -> bool:
    return at_work(child) > 0


def busy_since(child: Child, done_before: float) -> None:
    """Return as soon as `child` has done more than `done_before` (polled without pause)."""
    deadline = time.monotonic() + CAP
    while at_work(child) <= done_before:
        assert time.monotonic() < deadline, f"{child.name} did nothing within {CAP:.0f}s"


def run_everything(stack: JobsStack, **worker_env: str) -> None:
    stack.relay()
    stack.dispatcher()
    stack.worker(**worker_env)


def until_all_ran(stack: JobsStack, ids: list[str]) -> None:
    """Wait until every job in `ids` took effect and nothing is left to dispatch or run."""
    stack.until(lambda: stack.effects().keys() >= set(ids), f"all {len(ids)} committed jobs took effect")
    stack.until(stack.settled, "the jobs topic dispatched (lag 0) and the queue empty")


def test_a_rolled_back_transaction_or_savepoint_never_runs_its_job_while_the_committed_ones_do(
    kafka: KafkaSettings, stack: JobsStack
) -> None:
    committed = stack.commit_jobs([0])
    with stack.session() as session:
        rolled_back = [stack.enqueue(session, 1)]
        session.rollback()
    with stack.session() as session, session.begin():
        savepoint = session.begin_nested()
        rolled_back.append(stack.enqueue(session, 2))
        savepoint.rollback()
        committed.append(stack.enqueue(session, 3))  # the same transaction, outside the savepoint
    committed += stack.commit_jobs([4])

    run_everything(stack)
    until_all_ran(stack, committed)

    assert_once_each(stack, committed)
    assert stack.deliveries() == len(committed), "a rolled-back job reached a worker"
    published = committed_event_ids(kafka, stack.topic)
    assert sorted(published) == sorted(committed), "a rolled-back job was published, or a committed one not"


@pytest.mark.timeout(CAP * 3)
def test_two_thousand_jobs_take_effect_once_each_while_the_relay_and_the_dispatchers_are_sigkilled_at_random(
    stack: JobsStack,
) -> None:
    relay = stack.relay()
    dispatchers = [stack.dispatcher(batch_size=10), stack.dispatcher(batch_size=10)]  # a kill rebalances
    stack.worker()
    victims = cycle([relay, dispatchers[0], relay, dispatchers[1]])
    kills: Counter[str] = Counter()
    rng = random.Random(14)
    ids: list[str] = []
    for number, first in enumerate(range(0, JOBS, PER_TRANSACTION)):
        if number % KILL_EVERY != KILL_EVERY - 1:
            ids += stack.commit_jobs(range(first, first + PER_TRANSACTION))
            time.sleep(rng.uniform(0, 0.2))
            continue
        victim = next(victims)
        stack.until(partial(has_worked, victim), f"{victim.name} at work")  # not killed while starting
        done_before = at_work(victim)
        ids += stack.commit_jobs(range(first, first + PER_TRANSACTION))
        if victim in dispatchers:
            # Killed at a random moment of delivering this transaction's jobs, in batches of 10:
            # measured, kills on a clock of their own mostly hit dispatchers idle or polling (a
            # run with the inbox check removed then saw no duplicate and passed).
            busy_since(victim, done_before)
            time.sleep(rng.uniform(0, 0.03))
        else:
            time.sleep(rng.uniform(0, 0.3))
        victim.kill()
        victim.start()
        kills[victim.name.rsplit("-", 1)[0]] += 1

    until_all_ran(stack, ids)

    assert len(set(ids)) == JOBS
    assert_once_each(stack, ids)
    inbox, delivered = stack.inbox(), stack.deliveries()
    print(
        f"\n{JOBS} jobs in {JOBS // PER_TRANSACTION} transactions; SIGKILLs: {dict(kills)}; "
        f"the workers were handed {delivered} messages, the inbox absorbed {inbox.duplicates} duplicates"
    )
    assert inbox.done == JOBS
    assert delivered == JOBS + inbox.duplicates, "a delivery neither took effect nor was absorbed"
    assert min(kills.values()) >= KILLS


def test_a_dispatcher_killed_between_the_brokers_accept_and_its_offset_commit_sends_duplicates_absorbed(
    kafka: KafkaSettings, stack: JobsStack
) -> None:
    ids = stack.commit_jobs(range(30))
    stack.relay()
    stack.until(lambda: len(committed_event_ids(kafka, stack.topic)) == len(ids), "all 30 jobs published")
    stack.worker()
    # SIGKILLs itself right after its first `deliver` returned: the broker has the batch, Kafka
    # has no offset of it.
    crashing = stack.dispatcher(batch_size=10, module=("tests.crashing_dispatcher", "1"))
    assert crashing.wait(CAP) == -signal.SIGKILL, crashing.tail()
    stack.until(lambda: stack.deliveries() > 0, "the worker ran the batch the dead dispatcher delivered")
    stack.dispatcher(batch_size=10)

    until_all_ran(stack, ids)

    assert_once_each(stack, ids)
    inbox, delivered = stack.inbox(), stack.deliveries()
    print(f"\n{len(ids)} jobs; the broker delivered {delivered}; the inbox absorbed {inbox.duplicates}")
    assert delivered > len(ids), "the batch delivered before the crash was not delivered again"
    assert inbox.duplicates == delivered - len(ids)
    assert inbox.done == len(ids)


def test_a_worker_sigkilled_mid_job_gets_the_job_again_and_its_effect_happens_once(stack: JobsStack) -> None:
    [parked] = stack.commit_jobs([0], park=True)  # waits inside its transaction, effect written
    others = stack.commit_jobs(range(1, 20))
    run_everything(stack)
    stack.until(lambda: stack.parked() == 1, "the parked job started")

    [worker] = stack.running("worker")
    worker.kill()
    assert parked not in stack.effects(), "the killed worker's effect committed"
    mark(stack.engine, released, n=0)
    stack.worker()

    until_all_ran(stack, [parked, *others])
    assert_once_each(stack, [parked, *others])
    assert stack.parked() == 2, "the job was not run again after its worker died"


@pytest.mark.slow  # starts a Redis of its own
def test_a_redis_sigkilled_and_restarted_twice_during_delivery_loses_no_job_and_runs_none_twice(
    make_stack: Callable[[str], JobsStack], tmp_path: Path
) -> None:
    """Every job Redis accepted survives its SIGKILL (append-only file, fsync always).

    One limit, Dramatiq's own: a message a worker had prefetched when Redis went away stays in
    that worker's ack set, and is requeued only once that worker process is gone (its heartbeat
    stops): seen here 1 run in 4, 3 of 600 jobs waiting for the worker's restart. So the workers
    are restarted (SIGTERM, as a deploy does) once everything is dispatched."""
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        stack = make_stack(redis.url)
        run_everything(stack)
        ids: list[str] = []

        def write() -> None:
            for first in range(0, 600, 30):
                ids.extend(stack.commit_jobs(range(first, first + 30)))

        writer = threading.Thread(target=write)
        writer.start()
        for reached in (100, 350):
            stack.until(partial(took_effect, stack, reached), f"{reached} jobs took effect")
            redis.kill()
            time.sleep(1)  # the dispatcher and the workers find it gone
            redis.start()
        writer.join()
        stack.until(lambda: stack.status()["lag"] == 0, "every job dispatched")
        restart_workers(stack)

        until_all_ran(stack, ids)

        assert_once_each(stack, ids)
        inbox = stack.inbox()
        print(f"\n{len(ids)} jobs; Redis SIGKILLed {redis.kills}x; the inbox absorbed {inbox.duplicates}")
    finally:
        redis.kill()


def took_effect(stack: JobsStack, jobs: int) -> bool:
    return sum(stack.effects().values()) >= jobs


def restart_workers(stack: JobsStack) -> None:
    for worker in stack.running("worker"):
        worker.stop()
        worker.start()


def test_a_job_that_always_fails_is_dead_lettered_shown_in_status_and_metrics_and_replayed_once(
    stack: JobsStack,
) -> None:
    [job] = stack.commit_jobs([7], actor=FAILS_UNTIL_FIXED)
    stack.relay()
    port = free_port()
    stack.dispatcher(OUTBOXKIT_JOBS_HTTP_PORT=str(port))
    stack.worker()
    dead_letters = dead_letter_queues(redis_broker(stack.broker_url))
    stack.until(lambda: dead_letters.count(stack.queue) == 1, "the failing job in the dead-letter queue")

    assert stack.deliveries() == MAX_RETRIES + 1
    assert not stack.effects()
    assert [message.message_id for message in dead_letters.peek(stack.queue, 10)] == [job]
    assert stack.status()["dead_letters"] == {stack.queue: 1}
    assert metric(wait_until_probe(port, "/metrics", 200), "outboxkit_jobs_dead_letters") == 1

    mark(stack.engine, fixed, n=7, ok=True)
    assert "1 dead letter(s)" in stack.replay()
    until_all_ran(stack, [job])
    assert_once_each(stack, [job])
    assert stack.status()["dead_letters"] == {stack.queue: 0}
    assert metric(wait_until_probe(port, "/metrics", 200), "outboxkit_jobs_dead_letters") == 0


def test_the_workers_span_continues_the_trace_of_the_app_span_that_enqueued_the_job(
    stack: JobsStack, collector: Collector
) -> None:
    exporter = InMemorySpanExporter()
    app = TracerProvider()
    app.add_span_processor(SimpleSpanProcessor(exporter))
    with app.get_tracer("the app").start_as_current_span("POST /orders"):
        [job] = stack.commit_jobs([1])
    [app_span] = exporter.get_finished_spans()
    assert app_span.context is not None

    run_everything(stack, OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)
    until_all_ran(stack, [job])
    stack.until(lambda: bool(collector.named(f"{RECORD_EFFECT} process")), "the worker's span exported")

    [worker_span] = collector.named(f"{RECORD_EFFECT} process")
    assert worker_span.service == "jobs-e2e-worker"
    assert worker_span.attributes["messaging.message.id"] == job
    assert worker_span.span.trace_id == app_span.context.trace_id.to_bytes(16, "big")
    assert worker_span.span.parent_span_id == app_span.context.span_id.to_bytes(8, "big")
