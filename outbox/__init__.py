"""outbox: the app-side library. Events are written into the outbox table in the same
transaction as the business data, so what is rolled back emits nothing."""

from outbox.errors import HeaderError, OutboxError, PayloadError
from outbox.publish import publish
from outbox.table import metadata, outbox_table

__all__ = ["HeaderError", "OutboxError", "PayloadError", "metadata", "outbox_table", "publish"]
