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

from opentelemetry.trace import Tracer

from runtime.backoff import Backoff
from runtime.observe import Endpoints, Histogram, Metrics, ServiceCheck
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
        endpoints: Endpoints | None = None,
        tracer: Tracer | None = None,
        verifier: Verifier | None = None,
        kafka_check: Callable[[], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._writer = writer
        self._batch_size = batch_size
        self._poll_timeout = poll_timeout
        self._endpoints = endpoints or Endpoints(None)
        # Asked when a poll brings nothing: with no batch to write, nothing else would notice.
        warehouse = ServiceCheck("the warehouse", writer.ping)
        self._endpoints.health.services.append(warehouse)
        self._idle_checks: list[Callable[[], None]] = [warehouse]
        if kafka_check is not None:
            self._idle_checks.append(kafka_check)
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
            health=self._endpoints.health,
        )
        self.stats: SinkStats = self._settler.stats
        self.health = self._settler.health
        self._lag = 0
        self.metrics = self._metrics(self._endpoints.metrics)

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> SinkStats:
        """Loop until `should_stop()`; with `drain`, also stop once all partitions are caught up."""
        try:
            while not should_stop():
                records = self._consumer.poll(self._batch_size, self._poll_timeout)
                self._stop_at_gaps(should_stop)
                self._settler.settle(records, should_stop)
                self._lag = self._consumer.lag()  # here: the consumer is not for the metrics thread
                if not records:
                    if drain and self._consumer.caught_up():
                        break
                    for check in self._idle_checks:
                        check()
        finally:
            self._consumer.close()
            self._writer.close()
            self._endpoints.close()
        return self.stats

    def _stop_at_gaps(self, should_stop: Callable[[], bool]) -> None:
        """Partitions whose stored offset Kafka no longer holds stop there (see `Settler.stop_at`)."""
        while (gap := self._consumer.next_gap()) is not None:
            self._settler.stop_at(*gap, should_stop)

    def _metrics(self, metrics: Metrics) -> Metrics:
        """The counters read from `stats` and the gauges at scrape time (see `sink.names`), and
        the commit -> applied histogram settling fills."""
        for stat in fields(SinkStats):
            metrics.counter(*names.COUNTERS[stat.name], partial(self._stat, stat.name))
        metrics.gauge(*names.LAG_RECORDS, lambda: float(self._lag))
        metrics.gauge(*names.STOPPED_PARTITIONS, lambda: float(self._consumer.halted()))
        metrics.gauge(*names.READY, lambda: float(self.health.ready))
        metrics.histogram(self.latency)
        return metrics

    def _stat(self, name: str) -> float:
        return float(getattr(self.stats, name))
