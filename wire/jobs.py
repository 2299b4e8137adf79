"""A background job on the wire: a Dramatiq message carried as one outbox event.

The app's `outbox.jobs.enqueue()` writes the job into the outbox in its own transaction; the relay
publishes it like any event (exactly once, to the jobs topic); the dispatcher (`jobs.dispatch`)
hands it to the job broker. This module is the contract between the two ends, standard library
only so that either end, or a consumer in another process, reads it the same way.

One job is one event:

* `event_type` is `JOB_EVENT_TYPE`, `aggregate_type` is `JOB_AGGREGATE_TYPE`;
* the aggregate id, the record key **and the message id** are the event id, so a job's identity is
  fixed at enqueue time and every redelivery of it carries the same id (what the worker's inbox
  deduplicates on);
* the payload is the JSON object `Job.to_payload()` returns: the message's fields but its id, and
  `eta`, the absolute time (UNIX milliseconds) before which it must not run; None runs at once.
  A delay is turned into an eta when the job is written, so a job that waited in the outbox
  for a minute is not delayed a minute more.

Arguments are JSON as Dramatiq's default encoder writes them: what does not survive the trip
unchanged (a set, a date, a non-text mapping key, NaN) is refused at enqueue time, not changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from wire.errors import JobFormatError

JOB_EVENT_TYPE: Final = "dramatiq.message"
JOB_AGGREGATE_TYPE: Final = "job"
DEFAULT_JOBS_TOPIC: Final = "outboxkit.jobs"
TRACE_OPTION: Final = "outboxkit_trace"  # message option holding the W3C trace context of enqueue()

_FIELDS: Final = ("queue_name", "actor_name", "args", "kwargs", "options", "message_timestamp", "eta")


@dataclass(frozen=True, slots=True)
class Job:
    """One Dramatiq message as the outbox holds it. `message_id` is the event id."""

    message_id: str
    queue_name: str
    actor_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    message_timestamp: int = 0
    eta: int | None = None

    def to_payload(self) -> dict[str, Any]:
        """The event payload (JSON-ready): every field but the id, which the event carries."""
        return {name: getattr(self, name) for name in _FIELDS}

    def delay_ms(self, now_ms: int) -> int | None:
        """How long the broker should still hold the job at `now_ms`; None when it is due."""
        if self.eta is None or self.eta <= now_ms:
            return None
        return self.eta - now_ms

    @classmethod
    def from_payload(cls, message_id: str, payload: bytes) -> Job:
        """Parse an event payload; `JobFormatError` says what is wrong with one that is not a job."""
        try:
            fields = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise JobFormatError(f"job {message_id}: the payload is not JSON ({exc})") from exc
        if not isinstance(fields, dict) or set(fields) != set(_FIELDS):
            found = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise JobFormatError(f"job {message_id}: the payload must hold exactly {_FIELDS}, found {found}")
        _check_types(message_id, fields)
        return cls(message_id=message_id, **fields)


_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_timestamp": int,
    "eta": (int, type(None)),
}


def _check_types(message_id: str, fields: dict[str, Any]) -> None:
    wrong = sorted(name for name, kind in _TYPES.items() if not isinstance(fields[name], kind))
    if wrong:
        raise JobFormatError(f"job {message_id}: wrong type for {', '.join(wrong)}")
