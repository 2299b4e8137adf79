"""`publish()`: add an event to the outbox inside the caller's transaction.

The row is written with the session's own connection, so it commits or rolls back with the
business data — there is no second system to fail in between (the dual-write problem). Nothing
here talks to Kafka: only the relay publishes, and only what was committed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from outbox.envelope import RESERVED_HEADERS
from outbox.errors import HeaderError, PayloadError
from outbox.ids import new_event_id
from outbox.table import outbox_table


def publish(
    session: Session,
    *,
    topic: str,
    event_type: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: Mapping[str, Any],
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Write one event into the outbox in `session`'s current transaction; return its event id.

    The event reaches Kafka only if the transaction commits. `key` defaults to `aggregate_id`, so
    every event of one aggregate lands in one partition, in commit order.
    Raises `PayloadError` or `HeaderError` at once, inside the transaction, for input the wire
    cannot carry.
    """
    event_id = new_event_id()
    session.execute(
        insert(outbox_table).values(
            event_id=event_id,
            aggregatetype=aggregate_type,
            aggregateid=aggregate_id,
            type=event_type,
            topic=topic,
            key=aggregate_id if key is None else key,
            payload=_serialise(payload, event_type),
            headers=json.dumps(_checked_headers(headers or {})),
        )
    )
    return event_id


def _serialise(payload: Mapping[str, Any], event_type: str) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadError(
            f"the payload of a {event_type!r} event is not JSON-serialisable ({exc}); "
            "convert it to plain dicts, lists, strings and numbers before publishing"
        ) from exc


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    clashes = sorted(RESERVED_HEADERS.intersection(headers))
    if clashes:
        raise HeaderError(f"header name(s) {', '.join(clashes)} are reserved by outboxkit; rename them")
    return dict(headers)
