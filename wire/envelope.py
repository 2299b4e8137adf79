"""The wire contract between relay, Kafka and sink: what one event looks like on a topic.

Standard library only, so the relay, the sink and any third-party consumer can import it without
SQLAlchemy or pydantic. Everything that crosses Kafka is named here and nowhere else:

* the record **key** is the aggregate key (UTF-8), so all events of one aggregate share a partition;
  a composite primary key is encoded by `wire.keys.composite_key`;
* the record **value** is the payload exactly as serialised at capture time (JSON by default);
* the **headers** carry the event's identity (`outboxkit-event-id`, a time-ordered UUID), its type,
  aggregate, per-aggregate version and schema version, when it was written (`outboxkit-created-at`,
  ISO 8601 with its UTC offset), optionally a signature (`outboxkit-signature`, see
  `wire.signing`), plus user headers such as W3C `traceparent`;
* the record **timestamp** is the time the relay produced it, not when the event was written: a
  backlog published late keeps its true times in `outboxkit-created-at`. (Setting the timestamp to
  the write time instead would make Kafka's retention, measured from it, delete an old backlog as
  soon as it arrives, and brokers may refuse timestamps that far in the past.)
* the **partition** of a key is Kafka's own rule (`wire.partitioning`).

A consumer that finds a record without the required headers gets an `EnvelopeError` naming what is
missing, with the raw bytes kept so it can be dead-lettered rather than lost.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from wire.errors import EnvelopeError
from wire.headers import (
    HEADER_AGGREGATE_ID,
    HEADER_AGGREGATE_TYPE,
    HEADER_AGGREGATE_VERSION,
    HEADER_CONTENT_TYPE,
    HEADER_CREATED_AT,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_SCHEMA_VERSION,
    HEADER_SIGNATURE,
    JSON,
    REQUIRED_HEADERS,
    RESERVED_HEADERS,
)

MAX_DIGITS: Final = 18  # versions are 64-bit signed integers in the outbox and the warehouse
# Checked per record: one set comparison costs half of listing what is missing (B4's sink).
_REQUIRED: Final = frozenset(REQUIRED_HEADERS)

KafkaHeaders = Sequence[tuple[str, str | bytes | None]]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as it travels through Kafka. `extra_headers` never holds a reserved name.

    `aggregate_version` counts the aggregate's events (1, 2, 3...) in commit order; it is None only
    for records from producers that do not number their events. `created_at` is when the event
    was written to the outbox (timezone-aware); None for records of producers that do not say
    (outboxkit before it carried the header, or others). `signature` is set by relays that sign
    (`wire.signing`).
    """

    event_id: str
    topic: str
    key: bytes | None
    payload: bytes
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int | None = None
    schema_version: int = 1
    content_type: str = JSON
    extra_headers: tuple[tuple[str, bytes], ...] = field(default=())
    created_at: datetime.datetime | None = None
    signature: str | None = None

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """Headers to produce with the record: identity first, then the user's own."""
        headers = [
            (HEADER_EVENT_ID, self.event_id.encode()),
            (HEADER_EVENT_TYPE, self.event_type.encode()),
            (HEADER_AGGREGATE_TYPE, self.aggregate_type.encode()),
            (HEADER_AGGREGATE_ID, self.aggregate_id.encode()),
        ]
        if self.aggregate_version is not None:
            headers.append((HEADER_AGGREGATE_VERSION, str(self.aggregate_version).encode()))
        if self.created_at is not None:
            headers.append((HEADER_CREATED_AT, self.created_at.isoformat().encode()))
        headers += [
            (HEADER_SCHEMA_VERSION, str(self.schema_version).encode()),
            (HEADER_CONTENT_TYPE, self.content_type.encode()),
            *self.extra_headers,
        ]
        if self.signature is not None:
            headers.append((HEADER_SIGNATURE, self.signature.encode()))
        return headers

    @classmethod
    def from_kafka(
        cls, topic: str, key: bytes | None, value: bytes | None, headers: KafkaHeaders | None
    ) -> Envelope:
        """Rebuild an envelope from a consumed record, or raise `EnvelopeError` saying why not."""
        if value is None:
            raise EnvelopeError("the record has no value (a tombstone?)", key=key, value=value)
        found, extra = _split_headers(headers or (), key=key, value=value)
        if not found.keys() >= _REQUIRED:
            missing = [name for name in REQUIRED_HEADERS if name not in found]
            raise EnvelopeError(f"missing header(s) {', '.join(missing)}", key=key, value=value)
        numbers = _numbers(found, key=key, value=value)
        return cls(
            event_id=found[HEADER_EVENT_ID],
            topic=topic,
            key=key,
            payload=value,
            event_type=found[HEADER_EVENT_TYPE],
            aggregate_type=found[HEADER_AGGREGATE_TYPE],
            aggregate_id=found[HEADER_AGGREGATE_ID],
            aggregate_version=numbers.get(HEADER_AGGREGATE_VERSION),
            schema_version=numbers.get(HEADER_SCHEMA_VERSION, 1),
            content_type=found.get(HEADER_CONTENT_TYPE, JSON),
            extra_headers=extra,
            created_at=_created_at(found, key=key, value=value),
            signature=found.get(HEADER_SIGNATURE),
        )


def _split_headers(
    headers: KafkaHeaders, *, key: bytes | None, value: bytes
) -> tuple[dict[str, str], tuple[tuple[str, bytes], ...]]:
    """outboxkit's headers decoded, and the user's as they are: one pass (it runs per record)."""
    found: dict[str, str] = {}
    extra: list[tuple[str, bytes]] = []
    for name, raw in headers:
        if name in RESERVED_HEADERS:
            try:
                found[name] = raw if isinstance(raw, str) else (raw or b"").decode()
            except UnicodeDecodeError:
                raise EnvelopeError(f"header {name} is not UTF-8", key=key, value=value) from None
        elif raw is not None:
            extra.append((name, raw.encode() if isinstance(raw, str) else raw))
    return found, tuple(extra)


def _numbers(found: dict[str, str], *, key: bytes | None, value: bytes) -> dict[str, int]:
    numbers: dict[str, int] = {}
    for name in (HEADER_AGGREGATE_VERSION, HEADER_SCHEMA_VERSION):
        text = found.get(name)
        if text is None:
            continue
        if not (text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS):
            raise EnvelopeError(f"{name} is {text[:40]!r}, not a number", key=key, value=value)
        numbers[name] = int(text)
    return numbers


def _created_at(found: dict[str, str], *, key: bytes | None, value: bytes) -> datetime.datetime | None:
    text = found.get(HEADER_CREATED_AT)
    if text is None:
        return None
    try:
        at = datetime.datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        reason = f"{HEADER_CREATED_AT} is {text[:40]!r}, not an ISO 8601 time with its UTC offset"
        raise EnvelopeError(reason, key=key, value=value)
    return at
