"""The sink's names as the outside sees them — logger, tracer, span, metrics, service — in one
place: dashboards, alerts and log filters depend on them, so they change here or nowhere."""

from __future__ import annotations

from typing import Final

SERVICE: Final = "outboxkit-sink"  # OTEL_SERVICE_NAME unless set
LOGGER: Final = "outboxkit.sink"
TRACER: Final = "outboxkit.sink"
BATCH_SPAN: Final = "outboxkit.sink batch"  # one CONSUMER span per warehouse batch

# Counters read from the sink's stats (`SinkStats` field -> metric name, help).
COUNTERS: Final = {
    "received": ("outboxkit_sink_received_total", "records consumed and settled"),
    "applied": ("outboxkit_sink_applied_total", "events applied to warehouse tables"),
    "skipped": (
        "outboxkit_sink_skipped_total",
        "events skipped as duplicates or older than the row (dedupe)",
    ),
    "dead_letters": ("outboxkit_sink_dead_letters_total", "records written to outboxkit_dead_letters"),
    "batches": ("outboxkit_sink_batches_total", "warehouse transactions committed"),
    "moved": (
        "outboxkit_sink_moved_total",
        "batches refused because another instance had moved a partition's offset",
    ),
    "retries": ("outboxkit_sink_retries_total", "warehouse failures retried with the same batch"),
    "untrusted": (
        "outboxkit_sink_untrusted_total",
        "records refused as possibly not the relay's: a missing or bad signature, or a version jump "
        "above max_version_jump (dead letters and stops)",
    ),
}
LAG_RECORDS: Final = ("outboxkit_sink_lag_records", "records behind the partitions' ends")
STOPPED_PARTITIONS: Final = (
    "outboxkit_sink_stopped_partitions",
    "partitions halted at an incompatible or poison record",
)
READY: Final = (
    "outboxkit_sink_ready",
    "1 while the sink can do its job (Kafka and the warehouse answer, no partition stopped), as /readyz says",
)
COMMIT_TO_APPLIED: Final = (
    "outboxkit_sink_commit_to_applied_seconds",
    "seconds from an event's write to the outbox (outboxkit-created-at) to the commit of the "
    "warehouse transaction that settled it, per table row written (duplicates skipped included)",
)
