"""The sink's exception tree. Errors carry the Kafka coordinates needed to find the record."""

from __future__ import annotations


class SinkError(Exception):
    """Base of every error the sink raises."""


class SinkConfigError(SinkError):
    """Settings that would break a guarantee (e.g. read_uncommitted); the message names the field."""


class PoisonRecordError(SinkError):
    """A record that is not an outboxkit event. Its offset is NOT advanced, so nothing is lost."""

    def __init__(self, reason: str, *, topic: str, partition: int, offset: int, raw: bytes | None) -> None:
        super().__init__(
            f"record {topic}[{partition}]@{offset} cannot be applied: {reason}. The partition stops "
            "here and its offset is not advanced; fix or remove the record, then restart the sink"
        )
        self.topic, self.partition, self.offset, self.raw = topic, partition, offset, raw


class WarehouseError(SinkError):
    """The warehouse rejected a batch; the whole batch and its offsets were rolled back."""
