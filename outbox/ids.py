"""Event ids: UUIDv7 (RFC 9562), so ids sort by creation time and index well in B-trees.

Python 3.11 has no `uuid.uuid7`; this is the RFC's layout with a monotonic counter in the
`rand_a` field, so ids minted within one millisecond by one process still sort in mint order.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, counter) of the previous id


def new_event_id(clock_ns: int | None = None) -> str:
    """A fresh UUIDv7 as its canonical string. `clock_ns` is for deterministic tests."""
    global _last  # noqa: PLW0603 - one counter per process is the point
    now_ms = (time.time_ns() if clock_ns is None else clock_ns) // 1_000_000
    with _lock:
        last_ms, counter = _last
        if now_ms <= last_ms:
            now_ms, counter = last_ms, counter + 1
            if counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                now_ms, counter = now_ms + 1, 0
        else:
            counter = 0
        _last = (now_ms, counter)
    rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (now_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
