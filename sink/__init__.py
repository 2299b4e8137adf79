"""sink: consumes outboxkit topics read_committed and writes each batch and its offsets in one
warehouse transaction, so replays and redeliveries change nothing."""

from sink.consumer import WarehouseConsumer
from sink.errors import PoisonRecordError, SinkError, WarehouseError
from sink.run import Sink, SinkStats, sink_from_settings
from sink.settings import SinkSettings
from sink.writer import Delivered, SinkWriter, SqlWriter

__all__ = [
    "Delivered",
    "PoisonRecordError",
    "Sink",
    "SinkError",
    "SinkSettings",
    "SinkStats",
    "SinkWriter",
    "SqlWriter",
    "WarehouseConsumer",
    "WarehouseError",
    "sink_from_settings",
]
