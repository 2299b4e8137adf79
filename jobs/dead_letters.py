"""The broker's dead-letter queues: the jobs Dramatiq gave up on, counted, listed and replayed.

A message whose retries ran out (Dramatiq's Retries middleware: `max_retries`, default 20) is
rejected, and the broker keeps it in the queue's dead-letter queue, `<queue>.XQ`:

* Redis: the sorted set `<namespace>:<queue>.XQ` (message ids, scored by when they were
  dead-lettered) and the hash `<namespace>:<queue>.XQ.msgs` (id -> the encoded message, as it
  was last enqueued: `options["retries"]` counts the attempts before the last one);
* RabbitMQ: the durable queue `<queue>.XQ`, fed by the queue's dead-letter exchange.

Both brokers drop dead letters after `dead_message_ttl` (7 days by default): Redis at its next
queue maintenance, RabbitMQ through the queue's `x-message-ttl`. Replay before then.

`replay` enqueues each message again on its queue with `options["retries"]` reset to 0, and
removes it from the dead-letter queue only once the broker accepted it. A crash in between (or
two replays at once) leaves it in both: a duplicate, which the worker's inbox absorbs by message
id, never a loss. The enqueue is as durable as the broker is configured to make it (RabbitMQ:
`confirm_delivery=True`, as `jobs.delivery.broker_from_url` sets it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import xq_name
from pika.adapters.blocking_connection import BlockingChannel

from jobs.errors import JobsConfigError

# Options a broker sets for one trip through it; a replayed message starts a new trip.
_TRIP_OPTIONS = ("eta", "redis_message_id", "traceback", "requeue_timestamp")


class DeadLetterQueues(Protocol):
    """The dead-letter queues of one broker. Queue names are the actors' (canonical) ones."""

    def count(self, queue_name: str) -> int:
        """How many messages the queue's dead-letter queue holds."""

    def peek(self, queue_name: str, limit: int) -> list[dramatiq.Message[Any]]:
        """Up to `limit` dead letters, oldest first, left where they are."""

    def replay(self, queue_name: str, limit: int | None = None) -> int:
        """Move up to `limit` (default: all) dead letters back onto the queue, retries reset;
        how many were moved. See the module's docstring for what a crash midway leaves."""


def dead_letter_queues(broker: dramatiq.Broker) -> DeadLetterQueues:
    """The dead-letter queues of a Redis or RabbitMQ broker."""
    if isinstance(broker, RedisBroker):
        return RedisDeadLetters(broker)
    if isinstance(broker, RabbitmqBroker):
        return RabbitmqDeadLetters(broker)
    raise JobsConfigError(
        f"no dead-letter queues for a {type(broker).__name__}: the job broker must be Redis or RabbitMQ"
    )


def replayable(message: dramatiq.Message[Any]) -> dramatiq.Message[Any]:
    """The message as it goes back on its queue: same id, retries at 0, no trace of its last trip."""
    options = {name: value for name, value in message.options.items() if name not in _TRIP_OPTIONS}
    return dramatiq.Message(
        queue_name=message.queue_name,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options | {"retries": 0},
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )


class RedisDeadLetters:
    """Dramatiq's Redis dead letters: a sorted set of ids and a hash of their messages."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self._client = broker.client

    def _keys(self, queue_name: str) -> tuple[str, str]:
        ids = f"{self._broker.namespace}:{xq_name(queue_name)}"
        return ids, f"{ids}.msgs"

    def count(self, queue_name: str) -> int:
        ids, _ = self._keys(queue_name)
        return int(self._client.zcard(ids))

    def peek(self, queue_name: str, limit: int) -> list[dramatiq.Message[Any]]:
        return [message for _, message in self._oldest(queue_name, limit)]

    def replay(self, queue_name: str, limit: int | None = None) -> int:
        ids, messages = self._keys(queue_name)
        moved = 0
        for redis_id, message in self._oldest(queue_name, limit):
            self._broker.enqueue(replayable(message))
            with self._client.pipeline(transaction=True) as removal:
                removal.zrem(ids, redis_id)
                removal.hdel(messages, redis_id)
                removal.execute()
            moved += 1
        return moved

    def _oldest(self, queue_name: str, limit: int | None) -> list[tuple[bytes, dramatiq.Message[Any]]]:
        """(Redis id, message) of the oldest dead letters; an id whose message expired is skipped."""
        ids, messages = self._keys(queue_name)
        redis_ids = cast(list[bytes], self._client.zrange(ids, 0, -1 if limit is None else limit - 1))
        if not redis_ids:
            return []
        data = self._client.hmget(messages, redis_ids)
        return [(rid, dramatiq.Message.decode(raw)) for rid, raw in zip(redis_ids, data, strict=True) if raw]


class RabbitmqDeadLetters:
    """Dramatiq's RabbitMQ dead letters: the durable queue `<queue>.XQ`.

    Reads go through a connection of their own (from the broker's parameters), so the broker's
    per-thread channel is never left holding unacknowledged deliveries. `peek` takes messages
    without acknowledging them and closes the channel, which puts them back: while it runs,
    they are invisible to a concurrent `peek` or `replay`.
    """

    def __init__(self, broker: RabbitmqBroker) -> None:
        self._broker = broker

    @contextmanager
    def _channel(self, queue_name: str) -> Iterator[BlockingChannel]:
        self._broker.declare_queue(queue_name, ensure=True)  # the XQ exists, with Dramatiq's arguments
        connection = pika.BlockingConnection(self._broker.parameters)
        try:
            yield connection.channel()
        finally:
            connection.close()  # what was taken and not acknowledged goes back to the queue

    def count(self, queue_name: str) -> int:
        with self._channel(queue_name) as channel:
            declared = channel.queue_declare(xq_name(queue_name), passive=True)
            return int(declared.method.message_count)

    def peek(self, queue_name: str, limit: int) -> list[dramatiq.Message[Any]]:
        with self._channel(queue_name) as channel:
            return [message for _, message in self._take(channel, queue_name, limit)]

    def replay(self, queue_name: str, limit: int | None = None) -> int:
        moved = 0
        with self._channel(queue_name) as channel:
            if limit is None:  # those there now: a job dead-lettered again meanwhile is not taken twice
                limit = int(channel.queue_declare(xq_name(queue_name), passive=True).method.message_count)
            for tag, message in self._take(channel, queue_name, limit):
                self._broker.enqueue(replayable(message))
                channel.basic_ack(tag)
                moved += 1
        return moved

    @staticmethod
    def _take(
        channel: BlockingChannel, queue_name: str, limit: int
    ) -> Iterator[tuple[int, dramatiq.Message[Any]]]:
        taken = 0
        while taken < limit:
            method, _, body = channel.basic_get(xq_name(queue_name), auto_ack=False)
            if method is None:
                return
            taken += 1
            yield method.delivery_tag, dramatiq.Message.decode(body)
