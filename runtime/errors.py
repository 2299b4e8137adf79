"""The exception tree of what the processes share. The process entry turns each into one line and
an exit code (`outboxkit.failures`, `runtime.process.ExitCode`).

    ProcessError              the root: never raised itself
    └── StartTimeoutError     a start-up step kept failing for the whole start timeout (a database
                              or Kafka that never answered; the cause is its last failure): exit 1;
                              the operator checks the named setting, or raises the start timeout

Settings validators here (`runtime.urls`) raise `ValueError`, the way pydantic wants them to: it
reports them as invalid settings (exit 2), so they are not in this tree.
"""

from __future__ import annotations


class ProcessError(Exception):
    """Base of every error the shared process plumbing raises."""


class StartTimeoutError(ProcessError):
    """A start-up step kept failing for the whole start timeout; the cause is its last failure."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what}: still failing after {seconds:.0f} s of start-up")
        self.seconds = seconds
