"""relay: publishes committed outbox rows to Kafka, exactly once for read_committed consumers."""

from relay.capture import Batch, CapturedRow, CaptureSource, Position, PostgresCapture, SqliteCapture
from relay.checkpoint import Checkpoints
from relay.errors import FencedError, RelayError
from relay.leases import AdvisoryLeases, Leases, SoleLease
from relay.publisher import TransactionalPublisher
from relay.run import Relay, relay_from_settings
from relay.service import RelayService
from relay.settings import RelaySettings
from relay.shards import Shard
from relay.stats import RelayStats

__all__ = [
    "AdvisoryLeases",
    "Batch",
    "CaptureSource",
    "CapturedRow",
    "Checkpoints",
    "FencedError",
    "Leases",
    "Position",
    "PostgresCapture",
    "Relay",
    "RelayError",
    "RelayService",
    "RelaySettings",
    "RelayStats",
    "Shard",
    "SoleLease",
    "SqliteCapture",
    "TransactionalPublisher",
    "relay_from_settings",
]
