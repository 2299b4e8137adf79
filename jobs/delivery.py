"""`JobDelivery`: the narrow interface the dispatcher hands jobs to, and its Dramatiq implementation.

The contract every implementation keeps (tests/test_job_delivery.py runs one suite over each):

* `deliver(jobs)` returns only once the broker has **accepted every job** of the call, as durably
  as the broker is configured to keep what it accepted (Redis with `appendfsync always`, RabbitMQ
  with publisher confirms and persistent messages on durable queues). Only then does the
  dispatcher commit its Kafka offsets.
* When it raises (`BrokerUnavailableError`), any subset of the jobs may have been accepted: the
  caller delivers all of them again. Duplicates are allowed, losses are not; the worker's inbox
  absorbs the duplicates by message id.
* A job keeps its message id, queue, actor, arguments and options; a job with an eta in the
  future is held by the broker until then (Dramatiq's delay queue), one already due runs at once.
* `unreachable()` says why the broker cannot be used right now, or None: the readiness probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import dramatiq
import dramatiq.errors

from jobs.errors import BrokerUnavailableError, JobsConfigError
from wire.jobs import Job

# Seconds a broker call may hang before it counts as the broker being away: a dispatcher stuck on a
# dead socket is neither retrying nor saying why.
SOCKET_TIMEOUT: Final = 10.0
# RabbitMQ blocks publishers while it is short of memory or disk: without this a publish waits forever.
BLOCKED_TIMEOUT: Final = 60.0


class JobDelivery(Protocol):
    """Where the dispatcher hands jobs to: the contract is the module's docstring. Not thread-safe."""

    def deliver(self, jobs: Sequence[Job]) -> None:
        """Every job accepted by the broker on return; `BrokerUnavailableError` else."""
        ...

    def unreachable(self) -> str | None:
        """Why the broker cannot be used now (asks it), or None."""
        ...

    def close(self) -> None: ...


def broker_from_url(url: str, **kwargs: Any) -> dramatiq.Broker:
    """The Dramatiq broker of `url` (its other arguments in `kwargs`, e.g. `middleware`).

    redis:// and rediss:// make a `RedisBroker`; amqp:// and amqps:// a `RabbitmqBroker` with
    publisher confirms (`confirm_delivery=True`), so that `enqueue` returns only once RabbitMQ has
    taken the message — persistent (delivery mode 2) on a durable queue, as Dramatiq declares
    them. Both get bounded socket timeouts (`SOCKET_TIMEOUT`)."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        return _redis_broker(url, **kwargs)
    if scheme in ("amqp", "amqps"):
        return _rabbitmq_broker(url, **kwargs)
    raise JobsConfigError(
        f"the broker URL's scheme {scheme!r} is not redis://, rediss://, amqp:// or amqps://"
    )


def _redis_broker(url: str, **kwargs: Any) -> dramatiq.Broker:
    import redis  # noqa: PLC0415 - the install of the broker in use only
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

    client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)
    return RedisBroker(client=client, **kwargs)  # type: ignore[no-untyped-call]


def _rabbitmq_broker(url: str, **kwargs: Any) -> dramatiq.Broker:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: PLC0415 - needs pika, RabbitMQ's only

    broker = RabbitmqBroker(url=url, confirm_delivery=True, **kwargs)
    for parameters in broker.parameters if isinstance(broker.parameters, list) else [broker.parameters]:
        parameters.socket_timeout = SOCKET_TIMEOUT
        parameters.blocked_connection_timeout = BLOCKED_TIMEOUT
    return broker


def message_of(job: Job) -> dramatiq.Message[Any]:
    """The Dramatiq message a job is: its id, queue, actor, arguments, options and timestamp."""
    return dramatiq.Message(
        queue_name=job.queue_name,
        actor_name=job.actor_name,
        args=tuple(job.args),
        kwargs=job.kwargs,
        options=job.options,
        message_id=job.message_id,
        message_timestamp=job.message_timestamp,
    )


class DramatiqDelivery:
    """Jobs into a Dramatiq broker (`broker_from_url`), as `broker.enqueue` sends them.

    The broker only sends: nothing here runs an actor, and no actor needs to be declared on it
    (the worker processes declare theirs). Each queue a job names is declared on it first: Redis
    needs nothing declared to enqueue and RabbitMQ declares a queue at its first enqueue anyway,
    but the declared queues are those `queue_depths` reports."""

    def __init__(self, broker: dramatiq.Broker, *, clock_ms: Callable[[], int] | None = None) -> None:
        self.broker = broker
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._transient = transient_errors()

    def deliver(self, jobs: Sequence[Job]) -> None:
        now = self._clock_ms()
        for job in jobs:
            try:
                self.broker.declare_queue(job.queue_name)
                self.broker.enqueue(message_of(job), delay=job.delay_ms(now))
            except self._transient as exc:
                raise BrokerUnavailableError(
                    f"the job broker did not accept job {job.message_id} ({_first_line(exc)}); the batch is "
                    "delivered again — check that the broker runs and that OUTBOXKIT_JOBS_BROKER_URL is right"
                ) from exc

    def unreachable(self) -> str | None:
        try:
            _ping(self.broker)
        except self._transient as exc:
            return f"the job broker does not answer ({_first_line(exc)})"
        return None

    def close(self) -> None:
        self.broker.close()
        client = getattr(self.broker, "client", None)
        if client is not None:
            client.close()


def transient_errors() -> tuple[type[Exception], ...]:
    """What a broker raises when it is away or refuses for now, for each broker library installed:
    redis-py's connection errors and timeouts (a Redis loading its data after a restart included),
    pika's AMQP errors (a lost connection, a nack, a publish blocked too long), and Dramatiq's own
    `ConnectionError`, which its RabbitMQ broker raises once its retries run out."""
    # Dramatiq 2 renamed its ConnectionError; 1.x has only the old name.
    errors: list[type[Exception]] = [
        getattr(dramatiq.errors, "BrokerConnectionError", None) or dramatiq.errors.ConnectionError
    ]
    with suppress(ImportError):
        import redis  # noqa: PLC0415 - either library may be absent

        errors += [redis.ConnectionError, redis.TimeoutError]
    with suppress(ImportError):
        import pika.exceptions  # noqa: PLC0415

        errors.append(pika.exceptions.AMQPError)
    return tuple(errors)


def _ping(broker: dramatiq.Broker) -> None:
    """One round trip to the broker: Redis's PING, or RabbitMQ's connection (opened if need be)."""
    client = getattr(broker, "client", None)
    if client is not None:
        client.ping()
    else:
        broker.connection.process_data_events(time_limit=0)  # type: ignore[attr-defined]


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
