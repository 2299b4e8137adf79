"""The app-side exception tree. Everything here is raised inside the application's transaction
(at `publish()` or at flush), so its commit fails while the business data is still in its hands —
never later, in the relay, where the event would have to be dropped or would block a partition."""

from __future__ import annotations


class OutboxError(Exception):
    """Base of every error the outbox library raises."""


class ConfigurationError(OutboxError):
    """A model or event declares outbox settings that cannot work; raised when it is defined."""


class PayloadError(OutboxError):
    """An event payload that cannot be put on the wire (not serialisable)."""


class PayloadTooLargeError(PayloadError):
    """A serialised payload above the configured limit, which sits below Kafka's message size."""


class HeaderError(OutboxError):
    """A user header that collides with a reserved envelope header or is not text."""


class ValueTooLongError(OutboxError):
    """An aggregate type, aggregate id (key) or event type longer than its outbox column holds.

    Refused on every database: PostgreSQL would fail the commit with a raw error, and SQLite, which
    ignores column lengths, would store it, so an app tested on SQLite would break in production.
    """


class TopicError(OutboxError):
    """A topic name Kafka would reject."""


class BulkOperationError(OutboxError):
    """A bulk ORM statement on an outbox model: it bypasses per-object capture, so it is refused."""
