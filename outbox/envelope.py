"""The wire contract between relay, Kafka and sink: what one event looks like on a topic.

Standard library only, so the relay, the sink and any third-party consumer can import it without
SQLAlchemy or pydantic. Everything that crosses Kafka is named here and nowhere else:

* the record **key** is the aggregate key (UTF-8), so all events of one aggregate share a partition;
* the record **value** is the payload exactly as serialised at capture time (JSON by default);
* the **headers** carry the event's identity (`outboxkit-event-id`, a time-ordered UUID), its type,
  aggregate and schema version, plus user headers such as W3C `traceparent`.

A consumer that finds a record without the required headers gets an `EnvelopeError` naming what is
missing, with the raw bytes kept so it can be quarantined rather than lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

HEADER_EVENT_ID: Final = "outboxkit-event-id"
HEADER_EVENT_TYPE: Final = "outboxkit-event-type"
HEADER_AGGREGATE_TYPE: Final = "outboxkit-aggregate-type"
HEADER_AGGREGATE_ID: Final = "outboxkit-aggregate-id"
HEADER_SCHEMA_VERSION: Final = "outboxkit-schema-version"
HEADER_CONTENT_TYPE: Final = "content-type"

REQUIRED_HEADERS: Final = (HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_AGGREGATE_TYPE, HEADER_AGGREGATE_ID)
RESERVED_HEADERS: Final = frozenset((*REQUIRED_HEADERS, HEADER_SCHEMA_VERSION, HEADER_CONTENT_TYPE))
JSON: Final = "application/json"

KafkaHeaders = Sequence[tuple[str, str | bytes | None]]


class EnvelopeError(ValueError):
    """A Kafka record that is not an outboxkit envelope. Carries the raw record for quarantine."""

    def __init__(self, reason: str, *, key: bytes | None, value: bytes | None) -> None:
        super().__init__(f"not an outboxkit event: {reason}")
        self.reason = reason
        self.key = key
        self.value = value


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as it travels through Kafka. `extra_headers` never holds a reserved name."""

    event_id: str
    topic: str
    key: bytes | None
    payload: bytes
    event_type: str
    aggregate_type: str
    aggregate_id: str
    schema_version: int = 1
    content_type: str = JSON
    extra_headers: tuple[tuple[str, bytes], ...] = field(default=())

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Headers to produce with the record: identity first, then the user's own."""
        identity = [
            (HEADER_EVENT_ID, self.event_id),
            (HEADER_EVENT_TYPE, self.event_type),
            (HEADER_AGGREGATE_TYPE, self.aggregate_type),
            (HEADER_AGGREGATE_ID, self.aggregate_id),
            (HEADER_SCHEMA_VERSION, str(self.schema_version)),
            (HEADER_CONTENT_TYPE, self.content_type),
        ]
        return [(name, value.encode()) for name, value in identity] + list(self.extra_headers)

    @classmethod
    def from_kafka(
        cls, topic: str, key: bytes | None, value: bytes | None, headers: KafkaHeaders | None
    ) -> Envelope:
        """Rebuild an envelope from a consumed record, or raise `EnvelopeError` saying why not."""
        if value is None:
            raise EnvelopeError("the record has no value (a tombstone?)", key=key, value=value)
        found = _decode_headers(headers or (), key=key, value=value)
        missing = [name for name in REQUIRED_HEADERS if name not in found]
        if missing:
            raise EnvelopeError(f"missing header(s) {', '.join(missing)}", key=key, value=value)
        version = found.get(HEADER_SCHEMA_VERSION, "1")
        if not version.isdigit():
            raise EnvelopeError(f"{HEADER_SCHEMA_VERSION} is {version!r}, not a number", key=key, value=value)
        return cls(
            event_id=found[HEADER_EVENT_ID],
            topic=topic,
            key=key,
            payload=value,
            event_type=found[HEADER_EVENT_TYPE],
            aggregate_type=found[HEADER_AGGREGATE_TYPE],
            aggregate_id=found[HEADER_AGGREGATE_ID],
            schema_version=int(version),
            content_type=found.get(HEADER_CONTENT_TYPE, JSON),
            extra_headers=tuple(
                (name, raw.encode() if isinstance(raw, str) else raw)
                for name, raw in (headers or ())
                if name not in RESERVED_HEADERS and raw is not None
            ),
        )


def _decode_headers(headers: KafkaHeaders, *, key: bytes | None, value: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, raw in headers:
        if name in RESERVED_HEADERS:
            try:
                found[name] = raw if isinstance(raw, str) else (raw or b"").decode()
            except UnicodeDecodeError:
                raise EnvelopeError(f"header {name} is not UTF-8", key=key, value=value) from None
    return found
