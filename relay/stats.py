"""What a relay has done, for logs, the demo, status and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.capture import Position


@dataclass
class RelayStats:
    published: int = 0
    transactions: int = 0
    aborted: int = 0
    quarantined: int = 0
    deleted: int = 0
    commit_seconds: float = 0.0
    position: Position = field(default_factory=Position)
