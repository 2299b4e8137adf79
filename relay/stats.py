"""What a relay has done, for logs, the demo, status and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from relay.capture.source import Position


@dataclass
class RelayStats:
    published: int = 0
    transactions: int = 0
    aborted: int = 0
    dead_letters: int = 0
    deleted: int = 0
    heartbeats: int = 0  # empty Kafka transactions that only moved the checkpoint (WAL capture)
    commit_seconds: float = 0.0
    position: Position = field(default_factory=Position)

    def add(self, other: RelayStats) -> None:
        """Add `other`'s counts to these (the position stays)."""
        for counter in fields(self):
            if counter.name != "position":
                setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))
