"""The small shared pieces: the wire contract, event ids and retry pacing."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import replace

import pytest
from pydantic import ValidationError

from outbox.ids import EventIdGenerator, new_event_id
from relay.settings import RelaySettings
from runtime.backoff import Backoff
from wire import Envelope, EnvelopeError, Signer, Verifier
from wire.headers import HEADER_CREATED_AT, HEADER_EVENT_ID, HEADER_EVENT_TYPE


def sample() -> Envelope:
    return Envelope(
        event_id=new_event_id(),
        topic="orders",
        key=b"42",
        payload=b'{"order_id":42}',
        event_type="OrderPlaced",
        aggregate_type="order",
        aggregate_id="42",
        schema_version=3,
        extra_headers=(("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
        created_at=datetime.datetime(2026, 11, 26, 8, 0, 0, 123456, datetime.UTC),
    )


def test_an_envelope_survives_the_trip_through_kafka_headers() -> None:
    sent = sample()
    received = Envelope.from_kafka(sent.topic, sent.key, sent.payload, sent.kafka_headers())
    assert received == sent


def test_a_record_without_identity_headers_is_refused_with_its_bytes_kept() -> None:
    headers = [(name, value) for name, value in sample().kafka_headers() if name != HEADER_EVENT_ID]
    with pytest.raises(EnvelopeError, match=HEADER_EVENT_ID) as caught:
        Envelope.from_kafka("orders", b"42", b"raw bytes", headers)
    assert caught.value.value == b"raw bytes"


def test_a_tombstone_and_a_non_utf8_header_are_refused() -> None:
    with pytest.raises(EnvelopeError, match="tombstone"):
        Envelope.from_kafka("orders", b"42", None, sample().kafka_headers())
    headers = [(HEADER_EVENT_TYPE, b"\xff\xfe"), *sample().kafka_headers()[:1]]
    with pytest.raises(EnvelopeError, match="not UTF-8"):
        Envelope.from_kafka("orders", b"42", b"{}", headers)


@pytest.mark.parametrize("written", [b"yesterday", b"2026-11-26T08:00:00"])
def test_a_creation_time_that_is_not_an_iso_time_with_its_offset_is_refused(written: bytes) -> None:
    headers = [(n, written if n == HEADER_CREATED_AT else v) for n, v in sample().kafka_headers()]
    with pytest.raises(EnvelopeError, match=f"{HEADER_CREATED_AT} is .*not an ISO 8601 time with its UTC"):
        Envelope.from_kafka("orders", b"42", b"{}", headers)


def test_event_ids_are_uuid7_and_sort_in_mint_order_even_within_one_millisecond() -> None:
    same_ms = 1_790_000_000_123_000_000
    mint = EventIdGenerator(clock_ns=lambda: same_ms)
    ids = [mint() for _ in range(5000)]  # more than the 4096 the per-millisecond counter holds
    parsed = [uuid.UUID(value) for value in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert parsed[0].int >> 80 == same_ms // 1_000_000


def test_a_clock_that_steps_back_never_yields_a_smaller_id() -> None:
    readings = iter([2_000_000_000_000_000_000, 1_000_000_000_000_000_000])
    mint = EventIdGenerator(clock_ns=lambda: next(readings))
    first, second = mint(), mint()
    assert second > first


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() -> None:
    slept: list[float] = []
    backoff = Backoff(initial=0.5, maximum=3.0, sleep=slept.append)
    for _ in range(5):
        backoff.wait()
    backoff.reset()
    backoff.wait()
    assert slept == [0.5, 1.0, 2.0, 3.0, 3.0, 0.5]


SECRET = b"a-signing-secret-of-32-bytes-at-least"


def test_a_signature_holds_through_kafka_and_breaks_on_any_change_to_what_a_consumer_acts_on() -> None:
    signed = Signer("2026-11", SECRET).sign(sample())
    verifier = Verifier({"2026-11": SECRET})
    received = Envelope.from_kafka(signed.topic, signed.key, signed.payload, signed.kafka_headers())

    assert verifier.problem(received) is None
    for changed in (
        replace(received, payload=b'{"order_id":43}'),
        replace(received, aggregate_version=1_000_000),
        replace(received, topic="payments"),
        replace(received, key=b"4", payload=b'2{"order_id":42}'),  # bytes moved between fields
    ):
        assert "does not match" in (verifier.problem(changed) or "")
    assert "no outboxkit-signature" in (verifier.problem(sample()) or "")


def test_signing_keys_rotate_by_id_and_no_secret_shows_in_a_repr_or_a_settings_error() -> None:
    old, new = Signer("old", SECRET), Signer("new", SECRET[::-1])
    both = Verifier({"old": SECRET, "new": SECRET[::-1]})
    assert both.problem(old.sign(sample())) is None
    assert both.problem(new.sign(sample())) is None
    assert "key id 'new', which this consumer does not know" in (
        Verifier({"old": SECRET}).problem(new.sign(sample())) or ""
    )
    assert SECRET.decode() not in repr(old) + repr(both)
    with pytest.raises(ValueError, match="at least 32"):
        Signer("old", b"short")
    with pytest.raises(ValidationError, match="signing_key") as refused:
        RelaySettings(_env_file=None, signing_key="short-but-secret")  # type: ignore[call-arg]
    assert "short-but-secret" not in str(refused.value)
