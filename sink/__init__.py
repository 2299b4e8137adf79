"""sink: consumes outboxkit topics read_committed and writes each batch and its offsets in one
warehouse transaction, deduped by key and version, so replays and redeliveries change nothing."""

from sink.consumer import WarehouseConsumer
from sink.errors import PartitionMovedError, SinkConfigError, SinkError, WarehouseError
from sink.mapping import TableMapping
from sink.run import sink_from_settings
from sink.service import Sink, SinkStats
from sink.settings import SinkSettings
from sink.writer import SinkWriter, SqlWriter

__all__ = [
    "PartitionMovedError",
    "Sink",
    "SinkConfigError",
    "SinkError",
    "SinkSettings",
    "SinkStats",
    "SinkWriter",
    "SqlWriter",
    "TableMapping",
    "WarehouseConsumer",
    "WarehouseError",
    "sink_from_settings",
]
