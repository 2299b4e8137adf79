"""The relay's exception tree, each class with the process exit code it ends the relay with.

    RelayError                    the root; exit 1
    ├── ConfigError               settings that cannot work together, or with this database (shards
    │                             on SQLite): exit 2, at start; the message names the setting to fix
    ├── CaptureError              the outbox cannot be read or written (database down, table
    │   │                         missing): retried with backoff; the operator checks the database
    │   └── UnsafeOutboxError     rows at or below the checkpoint were never published (ids reused):
    │       │                     the relay stops, deletes nothing; the message says how to recover
    │       └── SlotInvalidatedError  PostgreSQL invalidated the WAL relay's replication slot
    │                             (`max_slot_wal_keep_size`): exit 4; `outboxkit relay reset-slot`
    ├── CheckpointError           the last committed position cannot be read back from Kafka:
    │                             retried; the operator checks the checkpoint topic
    ├── PublishAbortedError       a Kafka transaction was aborted, nothing of it visible: retried
    │   └── UnpublishableRecordError  Kafka refuses one record for good: it becomes a dead letter
    │                             (the `outbox_dead_letters` table) and the rest is published
    ├── FencedError               a newer relay took this transactional id: exit 3; never restart
    │                             this instance in a loop, its successor is live
    ├── KafkaFatalError           librdkafka's producer is unusable: exit 1; restart the process
    └── LeaseLostError            the connection holding the leases broke: the relay stops
                                  publishing those shards and stands by; nothing to do

`exit_code` (`runtime.process.ExitCode`) lets a supervisor (Kubernetes) tell a settings mistake,
which no restart fixes, and a fenced zombie, which must not restart in a loop against a live
successor, from a crash.
"""

from __future__ import annotations

from runtime.process import ExitCode


class RelayError(Exception):
    """Base of every error the relay raises."""

    exit_code = ExitCode.ERROR


class ConfigError(RelayError):
    """Settings that cannot work together, or with the database; the message names the setting."""

    exit_code = ExitCode.CONFIG


class CaptureError(RelayError):
    """The outbox cannot be read or written (missing table, database down); retried."""


class UnsafeOutboxError(CaptureError):
    """The outbox holds, or would hold, rows at or below the checkpoint that were never published.

    An id (SQLite) or transaction id (PostgreSQL) the checkpoint counts as published was handed
    out again: a table recreated, a database restored from a backup, an outbox table that reuses
    ids. Capture would skip those rows and cleanup delete them, so the relay stops instead and
    deletes nothing; retrying cannot help. The message names the row or snapshot and what to do.
    """


class SlotInvalidatedError(UnsafeOutboxError):
    """PostgreSQL invalidated the replication slot a WAL relay streams from: it kept more WAL than
    `max_slot_wal_keep_size` allows (a relay stopped, or too slow, for long) and dropped what the
    slot needed. The slot can never stream again, and rows committed since its confirmed position
    reach Kafka only from the outbox table itself: `outboxkit relay reset-slot --yes` does that."""

    exit_code = ExitCode.SLOT_LOST

    def __init__(self, slot: str) -> None:
        super().__init__(
            f"replication slot {slot} was invalidated by PostgreSQL (wal_status 'lost': it held more "
            "WAL than max_slot_wal_keep_size): it can never stream again. Stop the relays of this "
            "source, then run `outboxkit relay reset-slot --yes` (with their settings): it recreates the "
            "slot and publishes from the outbox table what is not in Kafka yet. Give the slot more room "
            "(max_slot_wal_keep_size) or watch outboxkit_relay_slot_lag_bytes so it does not happen again"
        )
        self.slot = slot


class CheckpointError(RelayError):
    """The relay's last committed position could not be read back from Kafka."""


class PublishAbortedError(RelayError):
    """A Kafka transaction was aborted; nothing of it is visible. The batch is retried."""


class FencedError(RelayError):
    """A newer relay with the same transactional id fenced this one. Stop; never retry."""

    exit_code = ExitCode.FENCED


class KafkaFatalError(RelayError):
    """librdkafka raised a fatal error: the producer is unusable and the process must restart."""


class LeaseLostError(RelayError):
    """The connection holding this relay's leases broke (database restart, or this process was
    paused past the lease timeout): another relay may publish its shards now. The relay stops
    publishing them at once and carries on as a standby, taking shards again once free."""


class UnpublishableRecordError(PublishAbortedError):
    """Kafka refuses one record of the batch for good; the transaction was aborted, nothing is visible.
    `index` is the record's place in the batch: the relay dead-letters it and publishes the rest."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason
