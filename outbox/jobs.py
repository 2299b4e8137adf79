"""`enqueue()`: a Dramatiq message into the outbox, inside the caller's transaction.

    with Session(engine) as session, session.begin():
        session.add(order)
        enqueue(session, send_confirmation.message(order.id), delay=timedelta(minutes=5))

`actor.send()` inside the transaction sends a job whose data may still roll back; after the commit,
the job is lost if the process dies in between. Here the job is one outbox row (`wire.jobs`),
written with the session's connection, so it commits or rolls back with the business data,
savepoints included. The relay publishes it to the jobs topic like any event, and the dispatcher
(`outboxkit jobs dispatch`) hands it to the Dramatiq broker.

The message id is the event id, minted here: the broker may be handed a job twice in a crash
window, and both copies carry it, which is what the worker's inbox deduplicates on.

What Dramatiq would refuse or silently change on the way to the worker is refused here with a
`JobError`, while the transaction can still be rolled back: an actor the broker does not know, an
option nothing reads, an argument its JSON would not carry unchanged, a bad delay, queue or
priority. A job above `max_payload_bytes` raises `PayloadTooLargeError`.

`import outbox` does not load this module, so an app that only writes events loads no Dramatiq.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import dramatiq
from dramatiq.errors import ActorNotFound
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outbox import rows
from outbox.errors import JobError, PayloadTooLargeError
from outbox.ids import new_event_id
from outbox.settings import OutboxSettings, settings_for
from outbox.tracing import current_trace_headers
from outbox.wakeup import wrote_events
from wire.jobs import JOB_AGGREGATE_TYPE, JOB_EVENT_TYPE, TRACE_OPTION, Job

__all__ = ["JobError", "enqueue", "enqueue_async"]

# Dramatiq's Redis broker documents delays "less than 7 days"; its dead messages expire after as long.
MAX_DELAY: Final = timedelta(days=7)
_MILLISECOND: Final = timedelta(milliseconds=1)
# What `@dramatiq.actor` accepts as a queue name; `.DQ` and `.XQ` name a queue's delay and dead-letter queues.
_QUEUE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
_BROKER_QUEUES: Final = (".DQ", ".XQ")
# Message options Dramatiq's own code reads or writes that no middleware declares as an actor option
# (brokers/rabbitmq.py, middleware/retries.py, composition.py's groups).
_DRAMATIQ_OPTIONS: Final = frozenset(
    {
        "broker_priority",
        "retries",
        "traceback",
        "requeue_timestamp",
        "group_completion_uuid",
        "group_completion_callbacks",
    }
)
# Options outboxkit or the broker sets: a caller's value would be overwritten or ignored.
_SET_BY_US: Final = {
    "eta": "pass delay= to enqueue(); the dispatcher sets the eta when it hands the job to the broker",
    "delay": "pass delay= to enqueue()",
    "redis_message_id": "the Redis broker sets it on each send: enqueue a fresh actor.message(...)",
    TRACE_OPTION: "outboxkit puts the current trace context there",
}
_PRIORITY_RANGE: Final = range(256)  # an AMQP priority is one octet
_PLAIN: Final = frozenset({type(None), bool, int, str})


def enqueue(
    session: Session,
    message: dramatiq.Message[Any],
    /,
    *,
    delay: int | timedelta | None = None,
    priority: int | None = None,
    queue: str | None = None,
    broker: dramatiq.Broker | None = None,
    **options: Any,
) -> dramatiq.Message[Any]:
    """Write `message` into the outbox in `session`'s current transaction; return it as written.

    The returned message's id is the event id (also the row's key and aggregate id), its
    timestamp the time of this call. `delay` (milliseconds, or a timedelta, at most `MAX_DELAY`)
    becomes an absolute eta now, so time spent in the outbox counts toward it. `queue` replaces
    the actor's queue. `priority` becomes the `broker_priority` option: RabbitMQ honours it on
    queues declared with `max_priority`; Redis ignores it. `options` are message options, each
    one the broker's middleware declares (`broker.actor_options`) or one Dramatiq reads itself.

    `broker` is the one the actor is declared on, by default `dramatiq.get_broker()`; it is only
    consulted, nothing is sent. Raises `JobError` or `PayloadTooLargeError` at once, inside the
    transaction, for a job that would fail or change on its way to the worker.
    """
    target = _Broker(dramatiq.get_broker() if broker is None else broker, given=broker is not None)
    job, written = _job(message, target, delay=delay, priority=priority, queue=queue, extra=options)
    session.flush()  # pending ORM changes first, so outbox rows follow the order of the calls
    conn = session.connection()
    _write(conn, job, settings_for(session))
    wrote_events(session, conn.engine)
    return written


async def enqueue_async(
    session: AsyncSession,
    message: dramatiq.Message[Any],
    /,
    *,
    delay: int | timedelta | None = None,
    priority: int | None = None,
    queue: str | None = None,
    broker: dramatiq.Broker | None = None,
    **options: Any,
) -> dramatiq.Message[Any]:
    """`enqueue()` for an `AsyncSession`."""
    return await session.run_sync(
        enqueue, message, delay=delay, priority=priority, queue=queue, broker=broker, **options
    )


@dataclass(frozen=True, slots=True)
class _Broker:
    """The broker jobs are checked against, and whether the caller named it (for error messages)."""

    broker: dramatiq.Broker
    given: bool

    def __str__(self) -> str:
        which = "the broker passed as broker=" if self.given else "the global broker, dramatiq.get_broker()"
        return f"{which} (a {type(self.broker).__name__} with {len(self.broker.actors)} actors declared)"


def _job(
    message: dramatiq.Message[Any],
    broker: _Broker,
    *,
    delay: int | timedelta | None,
    priority: int | None,
    queue: str | None,
    extra: Mapping[str, Any],
) -> tuple[Job, dramatiq.Message[Any]]:
    """The job to write and the message it stands for, once everything about it was checked."""
    _check_actor(message.actor_name, broker)
    options = _options(message.options, extra, priority, broker)
    queue_name = _checked_queue(message.queue_name if queue is None else queue)
    _check_encodable(message.actor_name, {"args": message.args, "kwargs": message.kwargs, "options": options})
    now = time.time_ns() // 1_000_000
    eta = None if delay is None else now + _delay_ms(delay)
    if trace := current_trace_headers():
        options[TRACE_OPTION] = trace
    event_id = new_event_id()
    job = Job(
        event_id, queue_name, message.actor_name, list(message.args), dict(message.kwargs), options, now, eta
    )
    written = message.copy(message_id=event_id, queue_name=queue_name, message_timestamp=now, options=options)
    return job, written


def _write(conn: Connection, job: Job, settings: OutboxSettings) -> None:
    draft = rows.Draft(
        topic=settings.jobs_topic,
        event_type=JOB_EVENT_TYPE,
        aggregate_type=JOB_AGGREGATE_TYPE,
        aggregate_id=job.message_id,
        payload=job.to_payload(),
        event_id=job.message_id,
    )
    try:
        rows.write(conn, [draft], settings)
    except PayloadTooLargeError as exc:
        raise PayloadTooLargeError(
            f"job {job.message_id} of actor {job.actor_name!r} is {exc.size} bytes as JSON, above the limit "
            f"of {exc.limit}: pass the actor a reference to large data (a row id, an object's storage key) "
            "and let it load the data, or raise OUTBOXKIT_OUTBOX_MAX_PAYLOAD_BYTES together with Kafka's "
            "message.max.bytes and the job broker's message size limit",
            size=exc.size,
            limit=exc.limit,
        ) from None


def _check_actor(actor_name: str, broker: _Broker) -> None:
    try:
        broker.broker.get_actor(actor_name)
    except ActorNotFound:
        raise JobError(
            f"actor {actor_name!r} is not declared on {broker}, so no worker of it would run "
            "the job: import the module that defines the actor before enqueueing (@dramatiq.actor declares "
            "it on the broker current at that moment, dramatiq.get_broker()), declare it on this broker "
            "with @dramatiq.actor(broker=...), or pass enqueue(..., broker=) the broker it is declared on"
        ) from None


def _options(
    given: Mapping[str, Any], extra: Mapping[str, Any], priority: int | None, broker: _Broker
) -> dict[str, Any]:
    """The message's options with the caller's, checked; `priority` as `broker_priority`."""
    options = {**given, **extra}
    if priority is not None:
        if "broker_priority" in options:
            raise JobError(
                "pass either priority= or the broker_priority option, not both: they are one setting"
            )
        options["broker_priority"] = priority
    if taken := sorted(_SET_BY_US.keys() & options.keys()):
        raise JobError(
            "; ".join(
                f"the message option {name!r} is not the caller's: {_SET_BY_US[name]}" for name in taken
            )
        )
    known = broker.broker.actor_options | _DRAMATIQ_OPTIONS
    if unknown := sorted(options.keys() - known):
        raise JobError(
            f"unknown message option(s) {', '.join(map(repr, unknown))} on {broker}: nothing would read "
            f"them. It knows {', '.join(sorted(known))}; add the "
            "middleware that reads them to the broker (broker.add_middleware(...)), or drop them"
        )
    _check_priority(options.get("broker_priority", 0))
    return options


def _check_priority(priority: Any) -> None:
    if type(priority) is not int or priority not in _PRIORITY_RANGE:
        raise JobError(
            f"priority {priority!r} is not a broker priority: give an int from 0 to 255 (RabbitMQ orders "
            "by it on queues declared with max_priority; Redis ignores it)"
        )


def _checked_queue(queue_name: Any) -> str:
    if (
        not isinstance(queue_name, str)
        or not _QUEUE.fullmatch(queue_name)
        or queue_name.endswith(_BROKER_QUEUES)
    ):
        raise JobError(
            f"{queue_name!r} is not a Dramatiq queue name: start with a letter or an underscore, then "
            "letters, digits, '.', '_' or '-', and do not end in .DQ or .XQ (the broker's delay and "
            "dead-letter queues)"
        )
    return queue_name


def _delay_ms(delay: Any) -> int:
    milliseconds = delay // _MILLISECOND if isinstance(delay, timedelta) else delay
    if type(milliseconds) is not int or not 0 <= milliseconds <= MAX_DELAY // _MILLISECOND:
        raise JobError(
            f"delay {delay!r} is not a delay Dramatiq holds a job for: give milliseconds (an int) or a "
            f"timedelta, from 0 to {MAX_DELAY.days} days (the Redis broker's limit); for later, store the "
            "due date and enqueue the job from a scheduler"
        )
    return milliseconds


def _check_encodable(actor_name: str, parts: Mapping[str, Any]) -> None:
    """Refuse what Dramatiq's JSON would not give the actor back as it was given (tuples become lists,
    as they do in Dramatiq itself); converting it here would hand the actor something else."""
    for where, value in parts.items():
        try:
            fault = _fault(value, where)
        except RecursionError:
            fault = f"{where} is nested too deeply (or contains itself)"
        if fault:
            raise JobError(
                f"job of actor {actor_name!r}: {fault}, which Dramatiq's JSON would not carry unchanged: "
                "pass plain JSON values (str, int, float, bool, None, lists, dicts with text keys), e.g. a "
                "date as an ISO string, a Decimal as str(), a set as a sorted list, a model as its JSON dict"
            )


def _fault(value: Any, where: str) -> str | None:
    """What, in `value` (found at `where`), JSON does not carry as it is; None when all of it is."""
    kind = type(value)
    if kind in _PLAIN:
        return None
    if kind is float:
        return None if math.isfinite(value) else f"{where} is {value!r}, a float JSON has no number for"
    if kind is list or kind is tuple:
        return next(filter(None, (_fault(item, f"{where}[{n}]") for n, item in enumerate(value))), None)
    if kind is dict:
        return _mapping_fault(value, where)
    return f"{where} is a {kind.__name__}"


def _mapping_fault(value: dict[Any, Any], where: str) -> str | None:
    for key, item in value.items():
        if type(key) is not str:
            return f"{where} has the key {key!r}, a {type(key).__name__} (JSON keys are text)"
        if fault := _fault(item, f"{where}[{key!r}]"):
            return fault
    return None
