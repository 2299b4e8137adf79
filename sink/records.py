"""From a Kafka record to something the sink can apply — or a dead letter that says why not.

Decoding never raises for bad data: every failure becomes a `DeadLetter` carrying the record's
coordinates, raw key, value and headers, so it can be stored, shown and replayed instead of
blocking the partition or vanishing.

Nothing here knows confluent-kafka: the consumer (`sink.consumer.consumed`) hands over each
record as a `Consumed`, so batching, mapping and merging run (and are tested) without a client.
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from sink.columns import INT64
from wire import Envelope, EnvelopeError, Verifier
from wire.envelope import KafkaHeaders
from wire.headers import JSON

# A number orjson may not decode exactly: 16 or more digits in a row (integers beyond 64 bits are
# floats to orjson, and a double keeps 15 to 17 significant digits) or a three-digit exponent
# (1e-400 becomes 0.0). Found by mapping digits and points to 0, e/E to e and signs to s, then
# searching: 0.9 us for a 260-byte payload (a regex takes 4). A long digit string inside a text
# matches too: it costs only the exact pass.
_SHAPES = bytes(
    ord("0") if byte in b"0123456789." else ord("e") if byte in b"eE" else ord("s") if byte in b"+-" else 32
    for byte in range(256)
)
_DIGITS, _EXPONENT, _SIGNED_EXPONENT = b"0" * 16, b"e000", b"es000"


def _imprecise(value: bytes) -> bool:
    shapes = value.translate(_SHAPES)
    return _DIGITS in shapes or _EXPONENT in shapes or _SIGNED_EXPONENT in shapes


# Opens the reason of every record refused as not the relay's (a bad or missing signature, a version
# jump): counted apart (`outboxkit_sink_untrusted_total`) and easy to find among the dead letters.
UNTRUSTED = "untrusted record: "

# A partition's address, (topic, partition): the one the whole sink uses. Not confluent's
# `TopicPartition`, which is a mutable client object that also carries an offset.
Where = tuple[str, int]


@dataclass(slots=True)  # built per event: a frozen one costs ~5x to make; never mutated
class Source:
    """Where a record sat in Kafka, and its timestamp (ms) as the relay produced it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def where(self) -> Where:
        return self.topic, self.partition


@dataclass(slots=True)  # built per event: a frozen one costs ~5x to make; never mutated
class Consumed:
    """A record as Kafka delivered it: where it sat, and its key, value and headers untouched."""

    source: Source
    key: bytes | None
    value: bytes | None
    headers: KafkaHeaders


@dataclass(frozen=True, slots=True)
class Raw:
    """The record's bytes exactly as consumed, kept for dead letters."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, consumed: Consumed) -> Raw:
        return cls(key=consumed.key, value=consumed.value, headers=headers_of(consumed))


@dataclass(slots=True)  # built per event: a frozen one costs ~5x to make; never mutated
class Decoded:
    """A consumed record decoded for applying: an outboxkit event, or a Kafka tombstone (`envelope`
    is None)."""

    source: Source
    consumed: Consumed
    key: str
    envelope: Envelope | None
    payload: dict[str, Any]

    @property
    def raw(self) -> Raw:
        """Built only when the record becomes a dead letter: most never do."""
        return Raw.of(self.consumed)

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

    @property
    def untrusted(self) -> bool:
        """Refused as possibly not the relay's, rather than as malformed."""
        return self.reason.startswith(UNTRUSTED)


def headers_of(consumed: Consumed) -> tuple[tuple[str, bytes], ...]:
    """A record's headers as (name, bytes) pairs; a null header value becomes b''."""
    return tuple(
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in consumed.headers
    )


def decode(consumed: Consumed, *, max_bytes: int, verifier: Verifier | None = None) -> Decoded | DeadLetter:
    """Decode one consumed record; bad ones come back as dead letters with a readable reason.
    With a `verifier`, so does every record not signed by a key it knows, tombstones included."""
    source = consumed.source
    key_bytes, value = consumed.key, consumed.value
    if key_bytes is None:
        return DeadLetter(
            source, Raw.of(consumed), "the record has no key; outboxkit orders and dedupes by key"
        )
    try:
        key = key_bytes.decode()
    except UnicodeDecodeError:
        return DeadLetter(source, Raw.of(consumed), f"the key is not UTF-8 text ({key_bytes[:40]!r})")
    if value is None and verifier is not None:
        reason = (
            f"{UNTRUSTED}a Kafka tombstone carries no signature, and this sink accepts signed records only"
        )
        return DeadLetter(source, Raw.of(consumed), reason)
    if value is None:
        return Decoded(source, consumed, key, None, {})
    if len(value) > max_bytes:
        reason = f"the value is {len(value)} bytes, above max_record_bytes={max_bytes}"
        return DeadLetter(source, Raw.of(consumed), reason)
    return _event(source, consumed, key, value, verifier)


def _event(
    source: Source, consumed: Consumed, key: str, value: bytes, verifier: Verifier | None
) -> Decoded | DeadLetter:
    try:
        envelope = Envelope.from_kafka(source.topic, consumed.key, value, consumed.headers)
    except EnvelopeError as exc:
        return DeadLetter(source, Raw.of(consumed), exc.reason)
    problem = None if verifier is None else verifier.problem(envelope)
    if problem is not None:
        return DeadLetter(source, Raw.of(consumed), UNTRUSTED + problem, envelope.event_id)
    payload = _payload(envelope.content_type, value)
    if isinstance(payload, str):
        return DeadLetter(source, Raw.of(consumed), payload, envelope.event_id)
    return Decoded(source, consumed, key, envelope, payload)


def _payload(content_type: str, value: bytes) -> dict[str, Any] | str:
    """The payload object, or why there is none. orjson decodes and validates it (refusing NaN,
    infinities and lone surrogates); a payload whose numbers it may not keep exactly is decoded
    again by Python's parser, which keeps every digit."""
    if content_type != JSON:
        return f"content type {content_type!r} is not {JSON}"
    try:
        payload = orjson.loads(value)
        if isinstance(payload, dict) and _imprecise(value):
            payload = json.loads(value, parse_int=_integer, parse_float=_fraction)
    except orjson.JSONDecodeError as exc:
        return _invalid(value, exc)
    except (ValueError, RecursionError) as exc:  # bad data must become a dead letter, never a crash
        return f"the payload cannot be decoded: {exc}"
    if not isinstance(payload, dict):
        return f"the payload is a JSON {type(payload).__name__}, not an object"
    return payload


def _invalid(value: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why orjson refused the payload: a number beyond a double (`1e400`) is valid JSON all the same."""
    try:
        json.loads(value, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return f"the payload is not valid JSON: {exc}"
    return f"the payload holds a number beyond a double's range, which the sink cannot hold exactly: {exc}"


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _integer(text: str) -> int | decimal.Decimal:
    """An integer, or beyond 64 bits a `Decimal` (a numeric column, a JSON number on the way out)."""
    number = int(text)
    return number if number in INT64 else decimal.Decimal(text)


def _fraction(text: str) -> float | decimal.Decimal:
    """A float when a double holds the number Kafka holds (its shortest repr has the same value),
    else the exact `Decimal`."""
    number = float(text)
    return number if decimal.Decimal(repr(number)) == decimal.Decimal(text) else decimal.Decimal(text)
