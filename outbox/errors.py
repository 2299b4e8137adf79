"""The app-side exception tree. Everything here is raised inside the application's transaction
(at `publish()` or at flush), so its commit fails while the business data is still in its hands —
never later, in the relay, where the event would have to be dropped or would block a partition.

    OutboxError                   the root: never raised itself
    ├── ConfigurationError        a model or event declares outbox settings that cannot work
    │                             (raised when it is defined), or the database is neither PostgreSQL
    │                             nor SQLite; the developer fixes the declaration or the database
    ├── PayloadError              a payload that cannot be serialised; send JSON-able values
    │   └── PayloadTooLargeError  above OUTBOXKIT_OUTBOX_MAX_PAYLOAD_BYTES; send less, or raise it
    │                             together with Kafka's message.max.bytes
    ├── HeaderError               a header that is reserved or not text; rename it or send a string
    ├── ValueTooLongError         a key, aggregate type or event type longer than its column; shorten it
    ├── TopicError                a topic name Kafka would reject; the message says why
    ├── JobError                  a Dramatiq message `outbox.jobs.enqueue()` refuses: an actor the
    │                             broker does not know, an option nothing reads, arguments its JSON
    │                             would change, a bad delay, queue or priority; the message says which
    └── BulkOperationError        a bulk ORM statement on an outbox model, which would skip capture;
                                  change the objects one by one in the session

`ConfigurationError` is this package's configuration error: the app library has no process and
no exit code, so the name stays as published rather than the processes' `ConfigError`.
"""

from __future__ import annotations

from typing import Any


class OutboxError(Exception):
    """Base of every error the outbox library raises."""


class ConfigurationError(OutboxError):
    """A model or event declares outbox settings that cannot work (raised when it is defined), or
    the outbox is on a database outboxkit does not write to."""


class PayloadError(OutboxError):
    """An event payload that cannot be put on the wire (not serialisable)."""


class PayloadTooLargeError(PayloadError):
    """A serialised payload above the configured limit, which sits below Kafka's message size.

    `size` and `limit` (bytes) let a caller that knows better what the payload is say it in its words.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickle them as such
        return _too_large, (str(self), self.size, self.limit)


def _too_large(message: str, size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(message, size=size, limit=limit)


class HeaderError(OutboxError):
    """A user header that collides with a reserved envelope header or is not text."""


class ValueTooLongError(OutboxError):
    """An aggregate type, aggregate id (key) or event type longer than its outbox column holds.

    Refused on every database: PostgreSQL would fail the commit with a raw error, and SQLite, which
    ignores column lengths, would store it, so an app tested on SQLite would break in production.
    """


class TopicError(OutboxError):
    """A topic name Kafka would reject."""


class JobError(OutboxError):
    """A Dramatiq message that would fail, or silently change, on its way to the worker; refused by
    `outbox.jobs.enqueue()` while the transaction can still be rolled back."""


class BulkOperationError(OutboxError):
    """A bulk ORM statement on an outbox model: it bypasses per-object capture, so it is refused."""
