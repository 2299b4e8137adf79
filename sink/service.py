"""The sink loop: poll -> settle the records (`settle`: one warehouse transaction) -> repeat.

It owns no guarantee itself (the warehouse's transaction and offset compare-and-set do); it keeps
the process going — settling each poll (retries, refusals, halts: `settle`), stopping partitions
whose stored offset Kafka no longer holds — and shows what happens: metrics, probes, one span per
batch linked to the spans the events were written in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from functools import partial
from ipaddress import IPv4Address, IPv6Address

from opentelemetry.trace import Tracer

from runtime.backoff import Backoff
from runtime.observe import EVERY_INTERFACE, Histogram, Metrics, serve
from sink import names
from sink.batch import Policy
from sink.consumer import WarehouseConsumer
from sink.mapping import TableMapping
from sink.settle import Settler, SinkStats
from sink.warehouse import Warehouse
from wire import Verifier


class Sink:
    """Moves events from Kafka into one warehouse for one consumer group."""

    def __init__(
        self,
        consumer: WarehouseConsumer,
        writer: Warehouse,
        group_id: str,
        mappings: Mapping[str, Sequence[TableMapping]],
        *,
        batch_size: int = 5000,
        poll_timeout: float = 0.5,
        max_record_bytes: int = 1 << 20,
        poison_policy: Policy = "dlq",
        backoff: Backoff | None = None,
        http_port: int | None = None,
        http_host: IPv4Address | IPv6Address = EVERY_INTERFACE,
        tracer: Tracer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self._consumer = consumer
        self._writer = writer
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._http_port = http_port
        self._http_host = http_host
        self.latency = Histogram(*names.COMMIT_TO_APPLIED)
        self._settler = Settler(
            writer,
            consumer,
            group_id,
            dict(mappings),
            max_bytes=max_record_bytes,
            policy=poison_policy,
            verifier=verifier,
            backoff=backoff,
            tracer=tracer,
            latency=self.latency,
        )
        self.stats: SinkStats = self._settler.stats
        self.health = self._settler.health
        self._lag = 0
        self.metrics = self._metrics()

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> SinkStats:
        """Loop until `should_stop()`; with `drain`, also stop once all partitions are caught up."""
        server = (
            serve(self._http_port, self.metrics, self.health, self._http_host)
            if self._http_port is not None
            else None
        )
        try:
            while not should_stop():
                records = self._consumer.poll(self._batch_size, self._poll_timeout)
                self._stop_at_gaps(should_stop)
                self._settler.settle(records, should_stop)
                self._lag = self._consumer.lag()  # here: the consumer is not for the metrics thread
                if drain and not records and self._consumer.caught_up():
                    break
        finally:
            self._consumer.close()
            self._writer.close()
            if server is not None:
                server.shutdown()
        return self.stats

    def _stop_at_gaps(self, should_stop: Callable[[], bool]) -> None:
        """Partitions whose stored offset Kafka no longer holds stop there (see `Settler.stop_at`)."""
        while (gap := self._consumer.next_gap()) is not None:
            self._settler.stop_at(*gap, should_stop)

    def _metrics(self) -> Metrics:
        """The counters read from `stats` and the gauges at scrape time (see `sink.names`), and
        the commit -> applied histogram settling fills."""
        metrics = Metrics()
        for stat in fields(SinkStats):
            metrics.counter(*names.COUNTERS[stat.name], partial(self._stat, stat.name))
        metrics.gauge(*names.LAG_RECORDS, lambda: float(self._lag))
        metrics.gauge(*names.STOPPED_PARTITIONS, lambda: float(self._consumer.halted()))
        metrics.histogram(self.latency)
        return metrics

    def _stat(self, name: str) -> float:
        return float(getattr(self.stats, name))
