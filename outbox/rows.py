"""Turning drafted events into outbox rows: validate, serialise, version, insert.

Both entry points — `publish()` and the model mixin — end here, so every event meets the same
checks and every check fails inside the application's transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python
from sqlalchemy import Connection, String

from outbox.errors import HeaderError, PayloadError, PayloadTooLargeError, TopicError, ValueTooLongError
from outbox.ids import new_event_id
from outbox.settings import OutboxSettings
from outbox.store import store
from outbox.table import outbox_table
from outbox.tracing import current_trace_headers
from wire import shard_key
from wire.headers import RESERVED_HEADERS, not_text

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# The outbox's text columns with a length, in characters as PostgreSQL counts them (outbox_versions
# and outbox_dead_letters have the same). SQLite ignores lengths, so outboxkit enforces them itself.
_LIMITS = {
    column.name: column.type.length
    for column in outbox_table.columns
    if isinstance(column.type, String) and column.type.length is not None
}


@dataclass(frozen=True, slots=True)
class Draft:
    """An event about to become an outbox row. `key` None means: the aggregate id; `event_id` None:
    a new one (a job sets its own, as its message id is also its aggregate id and key)."""

    topic: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    payload: Any
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = 1
    event_id: str | None = None


def check_topic(topic: str) -> str:
    """Return `topic` if Kafka accepts it as a name, else raise `TopicError` saying why not."""
    if not _TOPIC.match(topic) or topic in {".", ".."}:
        raise TopicError(
            f"{topic!r} is not a valid Kafka topic name: use 1-249 characters from "
            "a-z A-Z 0-9 . _ - (and not '.' or '..')"
        )
    return topic


def write(conn: Connection, drafts: Sequence[Draft], settings: OutboxSettings) -> list[str]:
    """Write one outbox row (or logical message, see `OutboxSettings.write_as`) per draft, in order,
    on `conn`; return the event ids."""
    if not drafts:
        return []
    trace = current_trace_headers()
    rows = [_row(draft, settings, trace) for draft in drafts]
    store(conn, rows, settings.write_as)
    return [row["event_id"] for row in rows]


def _row(draft: Draft, settings: OutboxSettings, trace: Mapping[str, str]) -> dict[str, Any]:
    check_topic(draft.topic)
    payload = serialise(draft.payload, draft)
    size = len(payload.encode())
    if size > settings.max_payload_bytes:
        raise PayloadTooLargeError(
            f"the {draft.event_type!r} event of {draft.aggregate_type} {draft.aggregate_id} is {size} bytes, "
            f"above the limit of {settings.max_payload_bytes}: send a reference to large data instead, or "
            "raise OUTBOXKIT_OUTBOX_MAX_PAYLOAD_BYTES together with Kafka's message.max.bytes",
            size=size,
            limit=settings.max_payload_bytes,
        )
    key = draft.aggregate_id if draft.key is None else draft.key
    row = {
        "event_id": new_event_id() if draft.event_id is None else draft.event_id,
        "aggregatetype": draft.aggregate_type,
        "aggregateid": draft.aggregate_id,
        "type": draft.event_type,
        "topic": draft.topic,
        "key": key,
        "shard_key": shard_key(key),
        "payload": payload,
        "headers": _headers(trace, draft.headers),
        "schema_version": draft.schema_version,
    }
    _check_lengths(row, draft)
    return row


def _check_lengths(row: dict[str, Any], draft: Draft) -> None:
    for name, limit in _LIMITS.items():
        value = row[name]
        if isinstance(value, str) and len(value) > limit:
            raise ValueTooLongError(
                f"the {_shortened(draft.event_type)!r} event of {_shortened(draft.aggregate_type)} "
                f"{_shortened(draft.aggregate_id)}: its {name} is {len(value)} characters, above the limit "
                f"of {limit} its outbox column holds on every database: shorten it (a key: point key= at "
                "a shorter attribute, or key by a hash of it)"
            )


def _shortened(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:40]}..."


def serialise(payload: Any, draft: Draft) -> str:
    """Strict JSON: dates, decimals, UUIDs and enums become text; NaN and unknown types are refused."""
    try:
        return json.dumps(
            to_jsonable_python(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise PayloadError(
            f"the payload of the {draft.event_type!r} event of {draft.aggregate_type} {draft.aggregate_id} "
            f"is not JSON-serialisable ({exc}); give it plain values, or a pydantic model that serialises"
        ) from exc


def _headers(trace: Mapping[str, str], headers: Mapping[str, str]) -> str:
    if not trace and not headers:
        return "{}"  # most events: no JSON to encode
    return json.dumps({**trace, **_checked_headers(headers)})


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    clashes = sorted(RESERVED_HEADERS.intersection(headers))
    if clashes:
        raise HeaderError(f"header name(s) {', '.join(clashes)} are reserved by outboxkit; rename them")
    if wrong := not_text(headers):
        raise HeaderError(f"header(s) {', '.join(wrong)} must be strings")
    return dict(headers)
