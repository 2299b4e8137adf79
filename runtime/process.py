"""What every outboxkit command shares as a process: exit codes, stopping on a signal, logging.

The exit codes are one set for all commands, so a supervisor (Kubernetes, systemd) reads the
same number the same way whichever process ended: a fenced relay zombie (3), which must not be
restarted in a loop against its live successor, from a settings mistake (2) or a crash (1), and
a WAL relay whose replication slot PostgreSQL invalidated (4), which no restart fixes either.
"""

from __future__ import annotations

import logging
import os
import signal
from enum import IntEnum
from types import FrameType

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    CONFIG = 2
    FENCED = 3  # another relay owns the transactional id now: this instance is a zombie
    SLOT_LOST = 4  # PostgreSQL invalidated the relay's replication slot: `outboxkit relay reset-slot`


class StopFlag:
    """Set by SIGTERM/SIGINT; the loops finish their current transaction and return."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def __call__(self) -> bool:
        return self.stopped


def configure_logging(level: str) -> None:
    """One line per record on stderr, with time, level and logger name (`--log-level`)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def alive(pid: int) -> bool:
    """Whether process `pid` still exists (signal 0 asks the kernel without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
