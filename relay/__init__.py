"""relay: publishes committed outbox rows to Kafka, exactly once for read_committed consumers."""

from relay.capture import Batch, CaptureSource, OutboxRecord, Position, PostgresCapture, SqliteCapture
from relay.checkpoint import Checkpoints
from relay.errors import ExitCode, FencedError, RelayError
from relay.publisher import TransactionalPublisher
from relay.run import Relay, RelayStats, relay_from_settings
from relay.settings import RelaySettings

__all__ = [
    "Batch",
    "CaptureSource",
    "Checkpoints",
    "ExitCode",
    "FencedError",
    "OutboxRecord",
    "Position",
    "PostgresCapture",
    "Relay",
    "RelayError",
    "RelaySettings",
    "RelayStats",
    "SqliteCapture",
    "TransactionalPublisher",
    "relay_from_settings",
]
