"""The relay's names as the outside sees them — logger, tracer, span, metrics, service — in one
place: dashboards, alerts and log filters depend on them, so they change here or nowhere."""

from __future__ import annotations

from typing import Final

SERVICE: Final = "outboxkit-relay"  # OTEL_SERVICE_NAME unless set
LOGGER: Final = "outboxkit.relay"
TRACER: Final = "outboxkit.relay"
PUBLISH_SPAN: Final = "outboxkit.relay publish"  # one PRODUCER span per Kafka transaction

# Counters read from the relay's stats (`RelayStats` field -> metric name, help).
COUNTERS: Final = {
    "published": ("outboxkit_relay_published_total", "events published (committed to Kafka)"),
    "transactions": ("outboxkit_relay_transactions_total", "Kafka transactions committed"),
    "aborted": ("outboxkit_relay_aborted_total", "Kafka transactions aborted and retried"),
    "dead_letters": (
        "outboxkit_relay_dead_letters_total",
        "outbox rows Kafka refused for good, moved to outbox_dead_letters",
    ),
    "deleted": ("outboxkit_relay_deleted_total", "published outbox rows deleted by cleanup"),
    "heartbeats": (
        "outboxkit_relay_heartbeats_total",
        "WAL capture: empty Kafka transactions that moved the checkpoint past WAL other tables "
        "wrote, so the slot could let it go",
    ),
    "commit_seconds": (
        "outboxkit_relay_commit_seconds_total",
        "seconds spent producing and committing Kafka transactions",
    ),
}
SHARDS_HELD: Final = ("outboxkit_relay_shards_held", "shards this relay publishes")
SHARDS_UNHELD: Final = (
    "outboxkit_relay_shards_unheld",
    "shards of the source no live relay holds: their events wait (more relays, or a higher max_shards)",
)
READY: Final = (
    "outboxkit_relay_ready",
    "1 while the relay can do its job (database and Kafka answer), as /readyz says; the sidecar's "
    "readiness must not gate its app, so this is what alerts watch",
)
BACKLOG_EVENTS: Final = ("outboxkit_relay_backlog_events", "committed events not yet published")
OLDEST_UNPUBLISHED: Final = (
    "outboxkit_relay_oldest_unpublished_seconds",
    "age of the oldest unpublished event",
)
SLOT_LAG_BYTES: Final = (
    "outboxkit_relay_slot_lag_bytes",
    "WAL capture: bytes of WAL the server keeps for the relay's replication slot (the most of any "
    "shard held); PostgreSQL invalidates the slot past max_slot_wal_keep_size",
)
SLOT_LAG_SECONDS: Final = (
    "outboxkit_relay_slot_lag_seconds",
    "WAL capture: for how long the slot has held that WAL — since the oldest waiting event was "
    "written, or since the slot was last confirmed (heartbeats keep it low on an idle outbox)",
)
COMMIT_TO_PUBLISHED: Final = (
    "outboxkit_relay_commit_to_published_seconds",
    "seconds from an event's write to the outbox (its created_at) to the commit of the Kafka "
    "transaction that published it",
)
