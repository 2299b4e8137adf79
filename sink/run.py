"""The sink loop: poll -> write batch and offsets in one warehouse transaction -> repeat.

A poison record stops the loop after the good records before it are written (policy `stop`):
its offset is never stored, so it is read again on restart and nothing is lost. A warehouse error
retries the same in-memory batch with backoff; nothing partial is ever committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import create_engine

from outbox.backoff import Backoff
from sink.consumer import WarehouseConsumer
from sink.errors import WarehouseError
from sink.settings import SinkSettings
from sink.writer import Delivered, SinkWriter, SqlWriter

log = logging.getLogger("outboxkit.sink")


@dataclass
class SinkStats:
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    batches: int = 0


class Sink:
    """Moves events from Kafka into one warehouse for one consumer group."""

    def __init__(
        self,
        consumer: WarehouseConsumer,
        writer: SinkWriter,
        group_id: str,
        *,
        batch_size: int = 1000,
        poll_timeout: float = 0.5,
        backoff: Backoff | None = None,
    ) -> None:
        self._consumer = consumer
        self._writer = writer
        self._group_id = group_id
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._backoff = backoff or Backoff()
        self.stats = SinkStats()

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> SinkStats:
        """Loop until `should_stop()`; with `drain`, also stop once all partitions are caught up."""
        try:
            while not should_stop():
                received = self._consumer.poll(self._batch_size, self._poll_timeout)
                self._write(received.delivered, should_stop)
                if received.poison is not None:
                    raise received.poison
                if drain and not received.delivered and self._consumer.caught_up():
                    break
        finally:
            self._consumer.close()
        return self.stats

    def _write(self, batch: Sequence[Delivered], should_stop: Callable[[], bool]) -> None:
        while batch:
            try:
                applied = self._writer.write(self._group_id, batch)
            except WarehouseError as exc:
                if should_stop():
                    raise
                log.warning("%s; retried the same batch after %.1fs", exc, self._backoff.wait())
                continue
            self._backoff.reset()
            self.stats.received += len(batch)
            self.stats.applied += applied
            self.stats.duplicates += len(batch) - applied
            self.stats.batches += 1
            return


def sink_from_settings(settings: SinkSettings) -> Sink:
    """Compose a sink from its settings: the one place that picks the parts."""
    writer = SqlWriter(create_engine(settings.warehouse_url.get_secret_value()))
    consumer = WarehouseConsumer(
        settings.kafka,
        settings.group_id,
        settings.topics,
        lambda topics: writer.stored_offsets(settings.group_id, topics),
        isolation_level=settings.isolation_level,
    )
    return Sink(
        consumer,
        writer,
        settings.group_id,
        batch_size=settings.batch_size,
        poll_timeout=settings.poll_timeout,
        backoff=Backoff(maximum=settings.max_backoff),
    )
