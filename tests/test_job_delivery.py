"""The `JobDelivery` contract (jobs/delivery.py's docstring), one suite run over every implementation:
`DramatiqDelivery` on Redis and on RabbitMQ, real brokers both, read back through Dramatiq's own
consumers and workers.

Each test works in a namespace (Redis) or on queues (RabbitMQ) of its own: the brokers are shared.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import default_middleware

from jobs.delivery import DramatiqDelivery, broker_from_url
from jobs.errors import BrokerUnavailableError
from tests.processes import free_port
from wire.jobs import TRACE_OPTION, Job

CAP = 60.0  # seconds any wait for a broker may take before the test fails


@dataclass
class Broker:
    """One broker under test: how to make brokers on it, and what it holds in a queue."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)  # e.g. a Redis namespace of the test's own
    made: list[dramatiq.Broker] = field(default_factory=list)

    def broker(self, **kwargs: Any) -> dramatiq.Broker:
        made = broker_from_url(self.url, **self.options, **kwargs)
        self.made.append(made)
        return made

    def delivery(self) -> DramatiqDelivery:
        return DramatiqDelivery(self.broker(middleware=[]))

    def held(self, queue: str) -> tuple[int, int]:
        """(due, delayed) messages waiting in `queue`."""
        reader = self.broker(middleware=[])
        if self.kind == "redis":
            client: Any = reader.client  # type: ignore[attr-defined]
            prefix = f"{self.options['namespace']}:{queue}"
            return int(client.hlen(f"{prefix}.msgs")), int(client.hlen(f"{prefix}.DQ.msgs"))
        due, delayed, _ = reader.get_queue_message_counts(queue)  # type: ignore[attr-defined]
        return int(due), int(delayed)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "redis":
        under_test = Broker(
            "redis", request.getfixturevalue("redis_url"), {"namespace": f"t-{uuid.uuid4().hex}"}
        )
    else:
        under_test = Broker("rabbitmq", request.getfixturevalue("rabbitmq_url"))
    yield under_test
    for made in under_test.made:
        made.close()


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


def job(queue: str, *, eta: int | None = None, **options: Any) -> Job:
    return Job(
        message_id=str(uuid.uuid4()),
        queue_name=queue,
        actor_name="send_email",
        args=[42, "ünïcode", [1, 2], {"nested": None}],
        kwargs={"order_id": 42, "flags": [True, False]},
        options={TRACE_OPTION: {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}, **options},
        message_timestamp=1_700_000_000_000,
        eta=eta,
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def consumed(broker: Broker, queue: str, count: int) -> list[dramatiq.Message[Any]]:
    """`count` messages taken (and acknowledged) from `queue` by Dramatiq's own consumer."""
    reader = broker.broker(middleware=[])
    reader.declare_queue(queue)
    consumer = reader.consume(queue, prefetch=count, timeout=200)
    found: list[dramatiq.Message[Any]] = []
    deadline = time.monotonic() + CAP
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} messages came out of {queue}"
        proxy = next(consumer)
        if proxy is not None:
            consumer.ack(proxy)
            found.append(proxy._message)
    consumer.close()
    return found


def test_delivered_jobs_come_out_of_the_broker_as_they_went_in(broker: Broker, queue: str) -> None:
    jobs = [job(queue, broker_priority=1), job(queue), job(queue, eta=now_ms() - 60_000)]  # the last: due

    broker.delivery().deliver(jobs)

    out = {message.message_id: message for message in consumed(broker, queue, len(jobs))}
    assert set(out) == {j.message_id for j in jobs}
    for sent in jobs:
        message = out[sent.message_id]
        assert (message.queue_name, message.actor_name) == (sent.queue_name, sent.actor_name)
        assert (list(message.args), message.kwargs) == (sent.args, sent.kwargs)
        assert message.message_timestamp == sent.message_timestamp
        assert message.options.items() >= sent.options.items()  # the broker adds its own (redis_message_id)
    assert broker.held(queue) == (0, 0)


def test_a_job_with_a_future_eta_is_held_until_then(broker: Broker, queue: str) -> None:
    """Held in the delay queue, not consumable; a Dramatiq worker runs it once its eta has passed."""
    later = job(queue, eta=now_ms() + 1500)

    broker.delivery().deliver([later])

    assert broker.held(queue) == (0, 1)
    ran = run_by_a_worker(broker, later)
    assert ran >= later.eta  # type: ignore[operator]
    assert broker.held(queue) == (0, 0)


def run_by_a_worker(broker: Broker, sent: Job) -> int:
    """When (UNIX ms) a real Dramatiq worker on the broker ran `sent`'s actor."""
    worker_broker = broker.broker(middleware=[m() for m in default_middleware])
    ran: list[int] = []
    done = threading.Event()

    def send_email(*args: Any, **kwargs: Any) -> None:
        ran.append(now_ms())
        done.set()

    dramatiq.actor(send_email, actor_name=sent.actor_name, queue_name=sent.queue_name, broker=worker_broker)
    worker = dramatiq.Worker(worker_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert done.wait(CAP), f"no worker ran {sent.message_id} within {CAP:.0f}s"
    finally:
        worker.stop()
    return ran[0]


@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:{port}/0", "amqp://guest:guest@127.0.0.1:{port}/%2F"])
def test_a_broker_that_is_down_raises_broker_unavailable(scheme: str) -> None:
    delivery = DramatiqDelivery(broker_from_url(scheme.format(port=free_port()), middleware=[]))
    try:
        with pytest.raises(BrokerUnavailableError, match="OUTBOXKIT_JOBS_BROKER_URL"):
            delivery.deliver([job("default")])
        assert delivery.unreachable() is not None
        assert "does not answer" in (delivery.unreachable() or "")
    finally:
        delivery.close()


def test_a_broker_that_answers_is_reachable(broker: Broker) -> None:
    assert broker.delivery().unreachable() is None
