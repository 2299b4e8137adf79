"""The names of the Kafka headers outboxkit writes, and the content type of a JSON payload.

The identity of an event travels in headers rather than in the value, so the value stays exactly the
payload the application wrote, in whatever format it chose. A consumer in any language needs only
these names (and `wire.envelope` for what each one holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

HEADER_EVENT_ID: Final = "outboxkit-event-id"
HEADER_EVENT_TYPE: Final = "outboxkit-event-type"
HEADER_AGGREGATE_TYPE: Final = "outboxkit-aggregate-type"
HEADER_AGGREGATE_ID: Final = "outboxkit-aggregate-id"
HEADER_AGGREGATE_VERSION: Final = "outboxkit-aggregate-version"
HEADER_SCHEMA_VERSION: Final = "outboxkit-schema-version"
HEADER_CREATED_AT: Final = "outboxkit-created-at"
HEADER_SIGNATURE: Final = "outboxkit-signature"  # optional, see `wire.signing`
HEADER_CONTENT_TYPE: Final = "content-type"

REQUIRED_HEADERS: Final = (HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_AGGREGATE_TYPE, HEADER_AGGREGATE_ID)
RESERVED_HEADERS: Final = frozenset(
    (
        *REQUIRED_HEADERS,
        HEADER_AGGREGATE_VERSION,
        HEADER_SCHEMA_VERSION,
        HEADER_CREATED_AT,
        HEADER_CONTENT_TYPE,
        HEADER_SIGNATURE,
    )
)
JSON: Final = "application/json"


def not_text(headers: Mapping[str, object]) -> list[str]:
    """The names, sorted, of `headers` whose values are not strings: a Kafka header the envelope
    carries is text (the app refuses such headers when it writes them, the relay when it reads)."""
    return sorted(name for name, value in headers.items() if not isinstance(value, str))
