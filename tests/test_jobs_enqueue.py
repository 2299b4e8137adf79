"""`outbox.jobs.enqueue()`: a Dramatiq message becomes one outbox row in the caller's transaction.

The specifications run on SQLite and PostgreSQL, with a `Session` and an `AsyncSession` (the
refusals, which happen before any SQL, on one of each). They claim nothing about delivery, only
about what the outbox holds, so the actors are declared on a private Dramatiq `StubBroker`, which
`enqueue()` only consults.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dramatiq
import dramatiq.broker
import pytest
from dramatiq.brokers.stub import StubBroker
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Engine

from outbox import SETTINGS_KEY, OutboxSettings, PayloadTooLargeError
from outbox.jobs import JobError, enqueue, enqueue_async
from tests.models import Base, Order
from tests.units import AsyncUnit, SyncUnit, Unit, app_database, outbox_rows
from wire.jobs import DEFAULT_JOBS_TOPIC, JOB_AGGREGATE_TYPE, JOB_EVENT_TYPE, TRACE_OPTION, Job


@dataclass
class App:
    engine: Engine
    make: Any
    broker: StubBroker
    units: list[Unit] = field(default_factory=list)

    def unit(self, settings: OutboxSettings | None = None) -> Unit:
        unit: Unit = self.make({SETTINGS_KEY: settings} if settings else {})()
        self.units.append(unit)  # closed by the fixture: a test failing mid-transaction holds no locks
        return unit

    def rows(self) -> list[Any]:
        return outbox_rows(self.engine)

    def jobs(self) -> list[Job]:
        return [Job.from_payload(row.event_id, row.payload.encode()) for row in self.rows()]


def send(unit: Unit, message: dramatiq.Message[Any], **kwargs: Any) -> dramatiq.Message[Any]:
    """`enqueue()` or `enqueue_async()`, whichever fits the unit's session."""
    if isinstance(unit, SyncUnit):
        return enqueue(unit.session, message, **kwargs)
    assert isinstance(unit, AsyncUnit)
    written: dramatiq.Message[Any] = unit.loop.run_until_complete(
        enqueue_async(unit.session, message, **kwargs)
    )
    return written


def declare(
    broker: dramatiq.Broker, name: str = "send_confirmation", **options: Any
) -> dramatiq.Actor[..., None]:
    """The actor `name` on `broker`, declared on first use."""
    if name in broker.actors:
        return broker.actors[name]

    def run(*args: Any, **kwargs: Any) -> None:
        """Never run: these tests read the outbox, not the broker."""

    return dramatiq.actor(run, actor_name=name, broker=broker, **options)


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    with app_database(request, tmp_path, Base.metadata) as (engine, units):
        app = App(engine, units, StubBroker())
        yield app
        for unit in app.units:
            unit.close()


ONE_OF_EACH = pytest.mark.parametrize("app", ["sqlite-sync", "postgresql-async"], indirect=True)


# --- one committed row per job, none for what rolls back --------------------------------------


def test_a_committed_job_is_one_row_that_reads_back_as_the_message(app: App) -> None:
    actor = declare(app.broker, max_retries=3)
    message = actor.message_with_options(
        args=(42, "ada", [1, 2.5], {"gift": None}), kwargs={"lang": "fr", "copies": (1, 2)}, max_retries=1
    )
    unit = app.unit()
    written = send(unit, message, broker=app.broker, time_limit=60_000)
    unit.commit()

    [row] = app.rows()
    assert (row.type, row.aggregatetype, row.topic) == (
        JOB_EVENT_TYPE,
        JOB_AGGREGATE_TYPE,
        DEFAULT_JOBS_TOPIC,
    )
    assert written.message_id == row.event_id == row.key == row.aggregateid != message.message_id
    assert app.jobs() == [
        Job(
            message_id=row.event_id,
            queue_name="default",
            actor_name="send_confirmation",
            args=[42, "ada", [1, 2.5], {"gift": None}],  # tuples travel as lists, as in Dramatiq itself
            kwargs={"lang": "fr", "copies": [1, 2]},
            options={"max_retries": 1, "time_limit": 60_000},
            message_timestamp=written.message_timestamp,
            eta=None,
        )
    ]
    assert (written.args, written.kwargs, written.options) == (
        message.args,
        message.kwargs,
        {"max_retries": 1, "time_limit": 60_000},
    )


def test_a_rolled_back_transaction_leaves_no_job(app: App) -> None:
    actor = declare(app.broker)
    unit = app.unit()
    send(unit, actor.message(1), broker=app.broker)
    unit.rollback()
    assert app.rows() == []


def test_a_rolled_back_savepoint_takes_its_job_with_it(app: App) -> None:
    actor = declare(app.broker)
    unit = app.unit()
    savepoint = unit.savepoint()
    send(unit, actor.message("rolled back"), broker=app.broker)
    unit.rollback_savepoint(savepoint)
    kept = send(unit, actor.message("kept"), broker=app.broker)
    unit.commit()
    assert [(job.message_id, job.args) for job in app.jobs()] == [(kept.message_id, ["kept"])]


def test_a_job_follows_the_changes_made_before_it(app: App) -> None:
    actor = declare(app.broker)
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))  # not flushed yet
    send(unit, actor.message(1), broker=app.broker)
    unit.commit()
    assert [row.type for row in app.rows()] == ["OrderCreated", JOB_EVENT_TYPE]


def test_the_job_carries_the_trace_context_it_was_enqueued_in(app: App) -> None:
    actor = declare(app.broker)
    tracer = TracerProvider().get_tracer("test")
    unit = app.unit()
    with tracer.start_as_current_span("place order") as span:
        written = send(unit, actor.message(1), broker=app.broker)
    send(unit, actor.message(2), broker=app.broker)  # outside any span
    unit.commit()

    context = span.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert [job.options.get(TRACE_OPTION) for job in app.jobs()] == [{"traceparent": traceparent}, None]
    assert written.options[TRACE_OPTION] == {"traceparent": traceparent}


# --- options pass through ---------------------------------------------------------------------


@pytest.mark.parametrize("delay", [90_000, timedelta(minutes=1, seconds=30)], ids=["ms", "timedelta"])
def test_a_delay_becomes_an_eta_from_the_time_of_enqueue(app: App, delay: int | timedelta) -> None:
    actor = declare(app.broker)
    unit = app.unit()
    before = time.time_ns() // 1_000_000
    send(unit, actor.message(1), broker=app.broker, delay=delay)
    after = time.time_ns() // 1_000_000
    unit.commit()
    [job] = app.jobs()
    assert job.eta is not None
    assert before + 90_000 <= job.eta <= after + 90_000
    assert job.queue_name == "default"  # the dispatcher, not the outbox, picks the broker's delay queue


def test_queue_priority_and_actor_options_pass_through(app: App) -> None:
    actor = declare(app.broker)
    on_failure = declare(app.broker, "report_failure")
    unit = app.unit()
    written = send(
        unit,
        actor.message_with_options(args=(1,), on_failure=on_failure),
        broker=app.broker,
        queue="mail.urgent",
        priority=7,
        max_retries=0,
        retries=2,
    )
    unit.commit()
    [job] = app.jobs()
    assert (job.queue_name, written.queue_name) == ("mail.urgent", "mail.urgent")
    expected = {"on_failure": "report_failure", "broker_priority": 7, "max_retries": 0, "retries": 2}
    assert job.options == written.options == expected


def test_the_jobs_topic_is_a_setting(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    actor = declare(app.broker)
    monkeypatch.setenv("OUTBOXKIT_OUTBOX_JOBS_TOPIC", "shop.jobs")
    unit = app.unit(OutboxSettings())
    send(unit, actor.message(1), broker=app.broker)
    unit.commit()
    assert [row.topic for row in app.rows()] == ["shop.jobs"]


def test_without_broker_the_global_broker_is_consulted(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dramatiq.broker, "global_broker", app.broker)
    actor = dramatiq.actor(lambda: None, actor_name="declared_globally")
    unit = app.unit()
    send(unit, actor.message())
    with pytest.raises(
        JobError, match=r"'elsewhere' is not declared on the global broker, dramatiq.get_broker"
    ):
        send(unit, declare(StubBroker(), "elsewhere").message())
    unit.commit()
    assert [job.actor_name for job in app.jobs()] == ["declared_globally"]


# --- refusals, inside the transaction ---------------------------------------------------------


def message_to(broker: StubBroker, *args: Any, **kwargs: Any) -> dramatiq.Message[Any]:
    return declare(broker).message(*args, **kwargs)


Build = Callable[[StubBroker], dramatiq.Message[Any]]


def to(*args: Any, **kwargs: Any) -> Build:
    return lambda broker: message_to(broker, *args, **kwargs)


def with_options(**options: Any) -> Build:
    return lambda broker: declare(broker).message_with_options(**options)


def elsewhere(_: StubBroker) -> dramatiq.Message[Any]:
    return declare(StubBroker(), "elsewhere").message()


REFUSED: dict[str, tuple[Build, dict[str, Any], str]] = {
    # name: (the message, enqueue's keywords, what the error says)
    "unknown actor": (elsewhere, {}, r"actor 'elsewhere' is not declared on the broker passed as broker="),
    "unknown option": (
        to(),
        {"max_tries": 3},
        r"unknown message option\(s\) 'max_tries'.*add the middleware",
    ),
    "unknown message option": (with_options(max_tries=3), {}, r"unknown message option\(s\) 'max_tries'"),
    "eta": (to(), {"eta": 1}, r"option 'eta' is not the caller's: pass delay="),
    "delay option": (with_options(delay=1), {}, r"option 'delay' is not the caller's: pass delay="),
    "redis id": (with_options(redis_message_id="x"), {}, r"option 'redis_message_id' is not the caller's"),
    "trace": (to(), {TRACE_OPTION: {}}, r"option 'outboxkit_trace' is not the caller's"),
    "set": (to({1, 2}), {}, r"args\[0\] is a set"),
    "date": (to(on=date(2024, 1, 1)), {}, r"kwargs\['on'\] is a date"),
    "decimal": (to([1, Decimal("9.99")]), {}, r"args\[0\]\[1\] is a Decimal"),
    "bytes": (to(b"pdf"), {}, r"args\[0\] is a bytes"),
    "int key": (to({1: "one"}), {}, r"args\[0\] has the key 1, a int \(JSON keys are text\)"),
    "nan": (to({"x": math.nan}), {}, r"args\[0\]\['x'\] is nan, a float JSON has no number for"),
    "inf": (to(x=math.inf), {}, r"kwargs\['x'\] is inf"),
    "object": (to(object()), {}, r"args\[0\] is a object"),
    "callable option": (to(), {"retry_when": lambda *_: True}, r"options\['retry_when'\] is a function"),
    "negative delay": (to(), {"delay": -1}, r"delay -1 is not a delay.*from 0 to 7 days"),
    "delay over 7 days": (to(), {"delay": timedelta(days=7, milliseconds=1)}, r"from 0 to 7 days"),
    "float delay": (to(), {"delay": 1.5}, r"delay 1.5 is not a delay.*milliseconds \(an int\)"),
    "queue of digits": (to(), {"queue": "1st"}, r"'1st' is not a Dramatiq queue name"),
    "delay queue": (to(), {"queue": "mail.DQ"}, r"'mail.DQ' is not a Dramatiq queue name.*\.DQ or \.XQ"),
    "dead-letter queue": (to(), {"queue": "mail.XQ"}, r"'mail.XQ' is not a Dramatiq queue name"),
    "empty queue": (to(), {"queue": ""}, r"'' is not a Dramatiq queue name"),
    "priority over 255": (to(), {"priority": 256}, r"priority 256 is not a broker priority"),
    "text priority": (to(), {"broker_priority": "high"}, r"priority 'high' is not a broker priority"),
    "two priorities": (
        to(),
        {"priority": 1, "broker_priority": 2},
        r"either priority= or the broker_priority",
    ),
}


@ONE_OF_EACH
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_job_that_would_not_reach_the_worker_as_given_is_refused(app: App, case: str) -> None:
    build, keywords, says = REFUSED[case]
    unit = app.unit()
    good = send(unit, message_to(app.broker, "good"), broker=app.broker)
    with pytest.raises(JobError, match=says):
        send(unit, build(app.broker), broker=app.broker, **keywords)
    unit.commit()  # the transaction goes on: only the refused job is missing
    assert [job.message_id for job in app.jobs()] == [good.message_id]


@ONE_OF_EACH
def test_a_refused_job_rolls_back_cleanly(app: App) -> None:
    unit = app.unit()
    send(unit, message_to(app.broker, "good"), broker=app.broker)
    with pytest.raises(JobError):
        send(unit, message_to(app.broker, {1, 2}), broker=app.broker)
    unit.rollback()
    assert app.rows() == []


@ONE_OF_EACH
def test_a_job_above_the_payload_limit_is_refused_in_its_own_words(app: App) -> None:
    unit = app.unit(OutboxSettings(max_payload_bytes=300))
    send(unit, message_to(app.broker, "x" * 100), broker=app.broker)
    says = r"of actor 'send_confirmation' is \d+ bytes as JSON, above the limit of 300: pass the actor a ref"
    with pytest.raises(PayloadTooLargeError, match=says) as refused:
        send(unit, message_to(app.broker, "x" * 300), broker=app.broker)
    unit.commit()
    assert [job.args for job in app.jobs()] == [["x" * 100]]
    copy = pickle.loads(pickle.dumps(refused.value))
    assert (str(copy), copy.size, copy.limit) == (str(refused.value), refused.value.size, 300)
    assert refused.value.size > 300
