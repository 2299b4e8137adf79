"""The relays and sinks under test, as OS processes started from the `outboxkit` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Proc:
    """One `outboxkit relay run` or `outboxkit sink run`, its output in a log file."""

    role: str
    env: Mapping[str, str]
    logs: Path
    number: int
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = (self.logs / f"{self.role}-{self.number}.log").open("ab")
        self.popen = subprocess.Popen(  # noqa: S603 - our own command, arguments fixed here
            [sys.executable, "-m", "outboxkit.cli", "--log-level", "WARNING", self.role, "run"],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.paused = False

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive and self.popen is not None:
            self.popen.send_signal(signum)
            self.paused = signum == signal.SIGSTOP

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL if it does not end within `timeout`."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code is None:
            self.kill()
        return code

    def wait(self, timeout: float) -> int | None:
        return waited(self.popen, self._log, timeout)


def waited(popen: subprocess.Popen[bytes] | None, log: IO[bytes] | None, timeout: float) -> int | None:
    """`popen`'s exit code once it ended within `timeout`, else None; its log closed once it ended."""
    if popen is None:
        return None
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        if log is not None and popen.poll() is not None:
            log.close()
