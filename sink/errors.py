"""The sink's exception tree, each class with the process exit code it ends the sink with.

    SinkError                     the root: Kafka unreachable or fatal, a topic unreadable: exit 1;
    │                             the operator checks the named service
    ├── SinkConfigError           settings (or a command's arguments) that would break a guarantee
    │                             or cannot work: exit 2, at start; the message names what to fix
    ├── WarehouseError            the warehouse rejected a batch, rolled back whole: retried, or
    │                             (`data`) narrowed down to the record, which becomes a dead letter
    ├── PartitionMovedError       another instance moved a partition's stored offset: the batch was
    │                             rolled back and the partition is re-read; nothing to do
    └── RecordsRefusedError       the writer will not apply some records (a tombstone for a key never
                                  seen): rolled back; they become dead letters or stop, per policy

Each message says what happened and what to do next; `exit_code` (`runtime.process.ExitCode`)
lets a supervisor tell a settings mistake, which no restart fixes, from a crash.
"""

from __future__ import annotations

from runtime.process import ExitCode


class SinkError(Exception):
    """Base of every error the sink raises."""

    exit_code = ExitCode.ERROR


class SinkConfigError(SinkError):
    """Settings that would break a guarantee (e.g. read_uncommitted); the message names the field."""

    exit_code = ExitCode.CONFIG


class WarehouseError(SinkError):
    """The warehouse rejected a batch; the whole batch and its offsets were rolled back.

    `data`: the database refused a value (out of range, constraint), so retrying the same batch
    cannot help; the sink narrows it down to the record and dead-letters that one. Otherwise the
    failure is taken as transient (connection lost, lock timeout) and the same batch is retried.
    """

    def __init__(self, message: str, *, data: bool = False) -> None:
        super().__init__(message)
        self.data = data


class PartitionMovedError(SinkError):
    """The stored offset of a partition is not where this sink left it: another instance wrote it.

    The batch was rolled back whole; the sink re-reads the partition from the stored offset (or
    has already lost it to a rebalance), so nothing is applied twice.
    """

    def __init__(self, topic: str, partition: int) -> None:
        super().__init__(
            f"{topic}[{partition}]: the stored offset moved under this sink (another instance, a "
            "replay, or this one paused past its session); the batch was rolled back and the "
            "partition is re-read from the warehouse"
        )
        self.topic, self.partition = topic, partition


class RecordsRefusedError(SinkError):
    """The writer will not apply some records of a batch (e.g. a tombstone for a key never seen):
    the batch was rolled back, and the sink settles those records as dead letters or stops, per
    policy. `reasons` maps (topic, partition, offset) to why."""

    def __init__(self, reasons: dict[tuple[str, int, int], str]) -> None:
        super().__init__(f"{len(reasons)} record(s) refused: {next(iter(reasons.values()), '')}")
        self.reasons = reasons
