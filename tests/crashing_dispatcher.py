"""`outboxkit jobs dispatch`, SIGKILLed right after its Nth delivery returned: a test fixture, not a feature.

    python -m tests.crashing_dispatcher N

The broker has accepted the Nth batch and the dispatcher has not committed its offsets: the crash
window in which the broker gets duplicates (jobs/dispatch.py). Settings come from OUTBOXKIT_JOBS_*
as for the real command.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

import jobs.delivery
from outboxkit.cli import main
from wire.jobs import Job

AT = int(sys.argv[1])
deliveries = 0
original_deliver = jobs.delivery.DramatiqDelivery.deliver


def deliver(self: jobs.delivery.DramatiqDelivery, batch: Sequence[Job]) -> None:
    global deliveries  # noqa: PLW0603 - a counter across calls of the patched method
    original_deliver(self, batch)
    deliveries += 1
    if deliveries == AT:
        os.kill(os.getpid(), signal.SIGKILL)


jobs.delivery.DramatiqDelivery.deliver = deliver  # type: ignore[method-assign]
sys.exit(main(["jobs", "dispatch"]))
