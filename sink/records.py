"""From a Kafka record to something the sink can apply — or a dead letter that says why not.

Decoding never raises for bad data: every failure becomes a `DeadLetter` carrying the record's
coordinates, raw key, value and headers, so it can be stored, shown and replayed instead of
blocking the partition or vanishing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from outbox.envelope import JSON, Envelope, EnvelopeError


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record sat in Kafka, and its timestamp (ms) as the relay produced it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def where(self) -> tuple[str, int]:
        return self.topic, self.partition


@dataclass(frozen=True, slots=True)
class Raw:
    """The record's bytes exactly as consumed, kept for dead letters."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded record: an outboxkit event, or a Kafka tombstone (`envelope` is None)."""

    source: Source
    raw: Raw
    key: str
    envelope: Envelope | None
    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        """The event id; tombstones carry none, so their Kafka coordinates stand in for one."""
        if self.envelope is None:
            return f"kafka:{self.source.topic}:{self.source.partition}:{self.source.offset}"
        return self.envelope.event_id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the sink will not apply, and why (`stop`: the partition halts here instead)."""

    source: Source
    raw: Raw
    reason: str
    event_id: str | None = None
    stop: bool = False


def source_of(message: Message) -> Source:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    return Source(
        topic=topic or "",
        partition=-1 if partition is None else partition,
        offset=-1 if offset is None else offset,
        timestamp_ms=message.timestamp()[1],
    )


def headers_of(message: Message) -> tuple[tuple[str, bytes], ...]:
    """A record's headers as (name, bytes) pairs; a null header value becomes b''."""
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return tuple((name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs)


def decode(message: Message, *, max_bytes: int) -> Record | DeadLetter:
    """Decode one consumed record; bad ones come back as dead letters with a readable reason."""
    raw = Raw(key=message.key(), value=message.value(), headers=headers_of(message))
    source = source_of(message)
    if raw.key is None:
        return DeadLetter(source, raw, "the record has no key; outboxkit orders and dedupes by key")
    try:
        key = raw.key.decode()
    except UnicodeDecodeError:
        return DeadLetter(source, raw, f"the key is not UTF-8 text ({raw.key[:40]!r})")
    if raw.value is None:
        return Record(source, raw, key, None, {})
    if len(raw.value) > max_bytes:
        return DeadLetter(
            source, raw, f"the value is {len(raw.value)} bytes, above max_record_bytes={max_bytes}"
        )
    return _event(source, raw, key)


def _event(source: Source, raw: Raw, key: str) -> Record | DeadLetter:
    value = raw.value or b""
    try:
        envelope = Envelope.from_kafka(source.topic, raw.key, value, list(raw.headers))
    except EnvelopeError as exc:
        return DeadLetter(source, raw, exc.reason)
    if envelope.content_type != JSON:
        return DeadLetter(
            source, raw, f"content type {envelope.content_type!r} is not {JSON}", envelope.event_id
        )
    try:
        payload = json.loads(value)
    except UnicodeDecodeError as exc:
        return DeadLetter(source, raw, f"the payload is not UTF-8 ({exc.reason})", envelope.event_id)
    except json.JSONDecodeError as exc:
        return DeadLetter(source, raw, f"the payload is not valid JSON: {exc}", envelope.event_id)
    if not isinstance(payload, dict):
        return DeadLetter(
            source, raw, f"the payload is a JSON {type(payload).__name__}, not an object", envelope.event_id
        )
    return Record(source, raw, key, envelope, payload)
