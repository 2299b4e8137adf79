"""Event ids: UUIDv7 (RFC 9562), so ids sort by creation time and index well in B-trees.

Python 3.11 has no `uuid.uuid7`; this is the RFC's layout with a monotonic counter in the
`rand_a` field (method 1 of RFC 9562 section 6.2), so ids minted within one millisecond by one
generator still sort in mint order, and a clock that steps back never produces a smaller id.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

_COUNTER_MAX = 0xFFF  # 12 bits of rand_a


class EventIdGenerator:
    """Mints UUIDv7 strings; thread-safe. Tests inject `clock_ns`."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> str:
        now_ms = self._clock_ns() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                self._last_ms, self._counter = now_ms, 0
            elif self._counter < _COUNTER_MAX:
                self._counter += 1
            else:  # 4096 ids in one millisecond: borrow the next millisecond
                self._last_ms, self._counter = self._last_ms + 1, 0
            millis, counter = self._last_ms, self._counter
        rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
        value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        digits = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, without building the UUID
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


new_event_id = EventIdGenerator()
