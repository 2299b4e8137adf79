"""sink: consumes outboxkit topics read_committed and writes each batch and its offsets in one
warehouse transaction, deduped by key and version, so replays and redeliveries change nothing."""

from sink.consumer import WarehouseConsumer
from sink.errors import PartitionMovedError, SinkConfigError, SinkError, WarehouseError
from sink.mapping import TableMapping
from sink.run import sink_from_settings
from sink.service import Sink
from sink.settings import SinkSettings
from sink.settle import SinkStats
from sink.warehouse import Warehouse as SinkWriter  # the public name; `Warehouse` inside the sink
from sink.writer import SqlWriter

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
