"""The worker's inbox: a Dramatiq message's effect commits once, however often it is delivered.

Delivery into the broker is at least once (see `jobs`), and so is Dramatiq's own: a worker killed
after its actor committed and before the broker's ack gets the message again (Redis requeues the
dead worker's messages once its heartbeat is older than the broker's `heartbeat_timeout`;
RabbitMQ when the connection closes). An actor decorated with `@inbox.exactly_once` writes the
message id into `outbox_job_inbox` in the same transaction as its own writes; a delivery that
finds the id already there is acknowledged without running the actor.

    inbox = Inbox(engine, retention=timedelta(days=7))
    broker.add_middleware(inbox.middleware)

    @dramatiq.actor
    @inbox.exactly_once
    def send_confirmation(session: Session, order_id: int) -> None:
        session.add(Confirmation(order_id=order_id))  # commits with the inbox row, or neither does

The middleware also continues the trace of the transaction that enqueued the job: it starts a
CONSUMER span `"<actor> process"` whose parent is the W3C context carried in the message's
`wire.jobs.TRACE_OPTION` option. This module uses only the OpenTelemetry API: the worker process
configures the SDK (a `TracerProvider` with an exporter, `opentelemetry.trace.set_tracer_provider`)
itself, before Dramatiq starts; without one the spans cost next to nothing.

Inbox rows are kept for `retention` (longer than any redelivery can take: Dramatiq's maximum
backoff is 7 days, so is the default) and pruned by a daemon thread in each worker process.

Limits: sync actors only. Dramatiq runs `async def` actors on an event loop thread of its own,
where the current message the middleware keeps per worker thread is not visible; supporting them
(an `AsyncSession` and a context handed over with the coroutine) is a follow-up.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from jobs.errors import NotInWorkerError
from jobs.names import INBOX_LOGGER, PROCESS_SPAN, TRACER
from outbox.table import job_inbox_table
from wire.jobs import TRACE_OPTION

P = ParamSpec("P")
R = TypeVar("R")

PRUNE_BATCH: Final = 1000  # rows per delete: short transactions, so pruning never holds writers up
# Messaging semantic conventions, spelled as runtime.tracing spells them (not imported: see pyproject).
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
MESSAGING_DESTINATION: Final = "messaging.destination.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"

log = logging.getLogger(INBOX_LOGGER)


@dataclass(frozen=True, slots=True)
class InboxCounts:
    """What the inbox holds: messages whose effect committed, and redeliveries it absorbed."""

    done: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class _Processing:
    """The message a worker thread is running, with its span and the context made current for it."""

    message: MessageProxy
    span: trace.Span
    token: object


_current: ContextVar[_Processing | None] = ContextVar("outboxkit_jobs_current", default=None)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Inbox:
    """The inbox of one worker database: the `exactly_once` decorator, its middleware, pruning.

    `bind` is the engine (or a sessionmaker of it) holding both `outbox_job_inbox` (created by
    `outbox.schema.upgrade`) and the actors' own tables: the point is one transaction for both.
    """

    def __init__(
        self,
        bind: Engine | sessionmaker[Session],
        *,
        retention: timedelta = timedelta(days=7),
        prune_interval: float = 600,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._sessions = bind if isinstance(bind, sessionmaker) else sessionmaker(bind)
        self.retention = retention
        self.prune_interval = prune_interval
        self._clock = clock
        self.middleware = InboxMiddleware(self)

    def exactly_once(self, fn: Callable[Concatenate[Session, P], R]) -> Callable[P, R | None]:
        """Run `fn(session, *args, **kwargs)` at most once per message id, in effect.

        In one transaction: insert the message's inbox row (`ON CONFLICT DO NOTHING`), call `fn`,
        commit. A row already there means the effect committed before: roll back, count the
        duplicate, return None without calling `fn`. An exception from `fn` rolls back all of it,
        inbox row included, and propagates, so Dramatiq's Retries middleware retries the message.

        Two deliveries of one message at the same time serialise on the inbox's primary key: on
        PostgreSQL the second insert waits on the unique index until the first transaction
        commits (then it finds the row and skips) or rolls back (then it runs); on SQLite the
        database's single writer lock does the same. Raises `NotInWorkerError` outside a worker
        with `inbox.middleware`. Sync functions only (see the module's docstring).
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"{fn.__qualname__}: exactly_once takes sync actors only (see jobs.inbox)")

        @functools.wraps(fn)
        def once(*args: P.args, **kwargs: P.kwargs) -> R | None:
            message = current_message()
            with self._sessions() as session:
                if not self._claim(session, message):
                    session.rollback()
                    self._count_duplicate(message)
                    return None
                result = fn(session, *args, **kwargs)
                session.commit()  # an exception above leaves the session to roll back on close
                return result

        return once

    def _claim(self, session: Session, message: MessageProxy) -> bool:
        """Insert the message's inbox row; False if it was there already (its effect committed)."""
        row = {
            "message_id": message.message_id,
            "actor_name": message.actor_name,
            "queue_name": q_name(message.queue_name),
            "done_at": self._clock(),
        }
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        claim = dialect.insert(job_inbox_table).values(row).on_conflict_do_nothing()
        # RETURNING, not rowcount: psycopg reports -1 for an insert that inserted nothing (seen).
        return session.execute(claim.returning(job_inbox_table.c.message_id)).first() is not None

    def _count_duplicate(self, message: MessageProxy) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(job_inbox_table)
                .where(job_inbox_table.c.message_id == message.message_id)
                .values(duplicates=job_inbox_table.c.duplicates + 1)
            )
        log.info(
            "message %s (%s) already ran: acknowledged without running it again",
            message.message_id,
            message.actor_name,
        )

    def counts(self) -> InboxCounts:
        """How many messages the inbox holds and how many redeliveries it absorbed."""
        query = select(func.count(), func.coalesce(func.sum(job_inbox_table.c.duplicates), 0))
        with self._sessions() as session:
            done, duplicates = session.execute(query).one()
        return InboxCounts(done=int(done), duplicates=int(duplicates))

    def prune(self, now: datetime | None = None) -> int:
        """Delete the rows done longer than `retention` before `now`, in short batches; how many.

        A message redelivered after its row is pruned runs again: keep `retention` longer than
        any redelivery can take (retries' backoff, a dead-letter replay)."""
        cutoff = (now or self._clock()) - self.retention
        oldest = (
            select(job_inbox_table.c.message_id).where(job_inbox_table.c.done_at < cutoff).limit(PRUNE_BATCH)
        )
        deleted = 0
        while True:
            with self._sessions.begin() as session:
                batch = int(
                    session.execute(  # type: ignore[attr-defined]
                        delete(job_inbox_table).where(
                            job_inbox_table.c.message_id.in_(oldest.scalar_subquery())
                        )
                    ).rowcount
                )
            deleted += batch
            if batch < PRUNE_BATCH:
                return deleted


def current_message() -> MessageProxy:
    """The message this worker thread is processing; `NotInWorkerError` if none."""
    processing = _current.get()
    if processing is None:
        raise NotInWorkerError(
            "no current Dramatiq message: an exactly_once actor runs only in a Dramatiq worker "
            "whose broker has the inbox's middleware; add it with broker.add_middleware(inbox.middleware)"
        )
    return processing.message


class InboxMiddleware(dramatiq.Middleware):
    """Keeps the message being processed for `exactly_once`, traces it, and prunes the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._pruner: _Pruner | None = None

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        span = trace.get_tracer(TRACER).start_span(
            PROCESS_SPAN.format(actor=message.actor_name),
            context=propagate.extract(_carrier(message.options.get(TRACE_OPTION))),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                MESSAGING_SYSTEM: "dramatiq",
                MESSAGING_MESSAGE_ID: message.message_id,
                MESSAGING_DESTINATION: q_name(message.queue_name),
                MESSAGING_OPERATION_TYPE: "process",
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        _current.set(_Processing(message, span, token))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        processing = _current.get()
        if processing is None:
            return
        if exception is not None:
            processing.span.record_exception(exception)
            processing.span.set_status(trace.Status(trace.StatusCode.ERROR, type(exception).__name__))
        self._finish(processing)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        processing = _current.get()
        if processing is not None:
            self._finish(processing)

    @staticmethod
    def _finish(processing: _Processing) -> None:
        processing.span.end()
        otel_context.detach(processing.token)  # type: ignore[arg-type]
        _current.set(None)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._pruner = _Pruner(self._inbox)
        self._pruner.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._pruner is not None:
            self._pruner.stop()
            self._pruner = None


def _carrier(value: object) -> Mapping[str, str]:
    """The W3C headers of the trace option; a missing or malformed one starts a new trace."""
    if not isinstance(value, dict):
        return {}
    return {name: text for name, text in value.items() if isinstance(name, str) and isinstance(text, str)}


class _Pruner(threading.Thread):
    """Prunes the inbox every `prune_interval` seconds until stopped; a failure is logged, and
    the next round tries again (a database restart must not end pruning for the process's life)."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__(name="outboxkit-inbox-pruner", daemon=True)
        self._inbox = inbox
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._inbox.prune_interval):
            try:
                deleted = self._inbox.prune()
            except Exception:
                log.exception("pruning the job inbox failed; trying again in %ss", self._inbox.prune_interval)
                continue
            if deleted:
                log.info("pruned %d job inbox rows older than %s", deleted, self._inbox.retention)

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)
