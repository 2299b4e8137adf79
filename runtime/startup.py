"""Start-up of the relay and the sink: a database or Kafka that is away for a moment is waited for.

A process started while a service restarts (a fault run showed a sink exiting 1 at start because
PostgreSQL was shutting down) retries with backoff instead of failing, as it does once running.
Meanwhile its probes say live and not ready (`runtime.observe.Endpoints`), and each retry logs
why. The wait is bounded by default (`start_timeout`): a service that never comes — a wrong host,
a firewall — ends a process run by hand with a clear error and exit code 1. Under Kubernetes a
timeout of 0 (no limit) is better: the pod shows not ready with the reason in its log, and is
ready as soon as the service is, where an exit would add the kubelet's crash-loop back-off
(up to 5 minutes) after the service came back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from runtime.backoff import Backoff
from runtime.errors import StartTimeoutError

T = TypeVar("T")


class StartWindow:
    """The time a starting process gives its services to answer; 0 seconds: no limit."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._deadline = clock() + seconds if seconds else math.inf

    @property
    def left(self) -> float:
        """Seconds until the window closes (0 once it has; infinite without a limit)."""
        return max(0.0, self._deadline - self._clock())

    def check(self, what: str, failure: Exception) -> None:
        """`what` failed with `failure`: raise StartTimeoutError once the window has passed."""
        if self._clock() >= self._deadline:
            raise StartTimeoutError(what, self.seconds) from failure

    def retry(
        self,
        what: str,
        attempt: Callable[[], T],
        transient: type[Exception],
        *,
        backoff: Backoff,
        log: logging.Logger,
        waiting: Callable[[], None] = lambda: None,
    ) -> T:
        """`attempt()`, repeated with `backoff` while it raises `transient`, until the window passes;
        `waiting()` after each failure (the process is alive: `Health.turned`)."""
        while True:
            try:
                return attempt()
            except transient as exc:
                waiting()
                self.check(what, exc)
                reason = next(iter(str(exc).splitlines()), type(exc).__name__)
                log.warning("%s failed (%s); retrying in %.1fs", what, reason, backoff.wait())
