"""Envelope signatures: proof that a record on a topic was published by a relay holding the key.

Standard library only, like the rest of `wire`, so the relay (which signs), the sink (which
verifies) and any other consumer share this one definition.

The signature is HMAC-SHA256 over a canonical encoding of what a consumer acts on: the topic, the
record key, the value and every outboxkit header *as parsed* (event id, types, aggregate id,
version, schema version, creation time, content type). A second copy of a header, a changed byte
or a record moved to another topic no longer matches. User headers (`traceparent` and the like)
are not covered: the sink takes nothing from them but trace links.

It travels in the `outboxkit-signature` header as `<key id>:<hex digest>`. The key id names which
secret signed, so keys rotate without a stop: give the sinks the new key next to the old one,
switch the relays to it, and drop the old key once no record signed with it is left to read.

What it does not do: it proves who published, not that the application meant it (whoever holds
the relay's key or database can publish anything), and it does not hide the payload.
"""

from __future__ import annotations

import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from wire.envelope import Envelope
from wire.errors import SigningKeyError

KEY_ID: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_SECRET_BYTES: Final = 32  # as long as the digest: a shorter secret is the weaker part of the MAC
_TAG: Final = b"outboxkit-signature-v1"
_LENGTHS: Final = struct.Struct(">11q")  # one per field of `canonical`


def canonical(envelope: Envelope) -> bytes:
    """The signed bytes: every field's length first (-1: absent), then the fields, so no two
    envelopes encode alike — e.g. moving bytes from the key into the value changes the encoding.
    One `struct.pack` and one join: this runs for every record on both sides."""
    created, version = envelope.created_at, envelope.aggregate_version
    fields = (
        envelope.topic.encode(),
        envelope.key,
        envelope.payload,
        envelope.event_id.encode(),
        envelope.event_type.encode(),
        envelope.aggregate_type.encode(),
        envelope.aggregate_id.encode(),
        None if version is None else str(version).encode(),
        str(envelope.schema_version).encode(),
        None if created is None else created.isoformat().encode(),
        envelope.content_type.encode(),
    )
    lengths = _LENGTHS.pack(*(-1 if field is None else len(field) for field in fields))
    return b"".join((_TAG, lengths, *(field for field in fields if field is not None)))


def _digest(secret: bytes, envelope: Envelope) -> str:
    return hmac.digest(secret, canonical(envelope), "sha256").hex()  # one-shot: a third of hmac.new's time


def checked_secret(key_id: str, secret: bytes) -> bytes:
    """`secret`, if it and its id can sign: the one check the signer, the verifier and both
    processes' settings share. The message never shows the secret, nor its length."""
    if not KEY_ID.match(key_id):
        raise SigningKeyError(f"signing key id {key_id[:64]!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if len(secret) < MIN_SECRET_BYTES:
        raise SigningKeyError(
            f"signing key {key_id!r}: use at least {MIN_SECRET_BYTES} random bytes, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` (the value is not shown)"
        )
    return secret


class Signer:
    """Signs envelopes with one key. Thread-safe (it holds no state but the key)."""

    def __init__(self, key_id: str, secret: bytes) -> None:
        self._key_id, self._secret = key_id, checked_secret(key_id, secret)

    def __repr__(self) -> str:  # never the secret, whatever logs the object
        return f"Signer(key_id={self._key_id!r})"

    def sign(self, envelope: Envelope) -> Envelope:
        """`envelope` with its signature."""
        return replace(envelope, signature=f"{self._key_id}:{_digest(self._secret, envelope)}")


class Verifier:
    """Checks envelopes against the keys it knows (by key id). Thread-safe."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise SigningKeyError("a verifier needs at least one signing key")
        self._keys = {key_id: checked_secret(key_id, secret) for key_id, secret in keys.items()}

    def __repr__(self) -> str:
        return f"Verifier(key_ids={sorted(self._keys)!r})"

    def problem(self, envelope: Envelope) -> str | None:
        """Why `envelope` is not signed by a known key, or None if it is."""
        if envelope.signature is None:
            return "it carries no outboxkit-signature, and this consumer accepts signed records only"
        key_id, _, digest = envelope.signature.partition(":")
        secret = self._keys.get(key_id)
        if secret is None:
            return (
                f"it is signed with key id {key_id[:64]!r}, which this consumer does not know "
                f"(it knows {', '.join(sorted(self._keys))}): add that key if the relays use it"
            )
        if not hmac.compare_digest(digest, _digest(secret, envelope)):
            return f"its signature (key id {key_id!r}) does not match its key, value and outboxkit headers"
        return None
