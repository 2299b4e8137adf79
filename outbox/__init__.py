"""outbox: the app-side library. Events are written into the outbox table in the same
transaction as the business data, so what is rolled back emits nothing."""

from outbox.errors import (
    BulkOperationError,
    ConfigurationError,
    HeaderError,
    OutboxError,
    PayloadError,
    PayloadTooLargeError,
    TopicError,
    ValueTooLongError,
)
from outbox.event import Event
from outbox.mixin import Outbox, OutboxMixin
from outbox.publish import publish, publish_async
from outbox.settings import SETTINGS_KEY, OutboxSettings
from outbox.table import metadata, outbox_table

__all__ = [
    "SETTINGS_KEY",
    "BulkOperationError",
    "ConfigurationError",
    "Event",
    "HeaderError",
    "Outbox",
    "OutboxError",
    "OutboxMixin",
    "OutboxSettings",
    "PayloadError",
    "PayloadTooLargeError",
    "TopicError",
    "ValueTooLongError",
    "metadata",
    "outbox_table",
    "publish",
    "publish_async",
]
