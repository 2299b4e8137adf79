"""Retry pacing shared by the relay and the sink: exponential, capped, with an injectable sleep.

Both processes retry what may heal on its own (a broker restarting, a warehouse lock); pacing it
exponentially keeps a down dependency from being hammered, and the cap bounds how stale a
recovered pipeline can be. Tests inject `sleep` so retries cost no wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Backoff:
    """Waits 2x longer after each consecutive failure, up to `maximum` seconds."""

    def __init__(
        self, *, initial: float = 0.2, maximum: float = 10.0, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._sleep = sleep
        self.failures = 0

    def wait(self) -> float:
        """Record a failure and sleep before the next try; return how long it slept."""
        delay: float = min(self._maximum, self._initial * 2.0**self.failures)
        self.failures += 1
        self._sleep(delay)
        return delay

    def reset(self) -> None:
        """The last try succeeded: the next failure starts from `initial` again."""
        self.failures = 0
