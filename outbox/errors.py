"""The app-side exception tree. Everything raised at flush time derives from `OutboxError`, so the
application's commit fails while the business data is still in its hands — never later, in the relay."""

from __future__ import annotations


class OutboxError(Exception):
    """Base of every error the outbox library raises."""


class PayloadError(OutboxError):
    """An event payload that cannot be put on the wire (not serialisable, too large, ...)."""


class HeaderError(OutboxError):
    """A user header that collides with a reserved envelope header or is not text."""
