"""Each package's public face is small and deliberate; changing it is a conscious act."""

from __future__ import annotations

import outbox
import outbox.jobs
import relay
import sink
import verify
import wire


def test_wire_exports() -> None:
    assert sorted(wire.__all__) == [
        "Envelope",
        "EnvelopeError",
        "Job",
        "JobFormatError",
        "Signer",
        "Verifier",
        "composite_key",
        "murmur2",
        "partition_for",
        "shard_key",
    ]


def test_outbox_exports() -> None:
    assert sorted(outbox.__all__) == [
        "BulkOperationError",
        "ConfigurationError",
        "Event",
        "HeaderError",
        "Outbox",
        "OutboxError",
        "OutboxMixin",
        "OutboxSettings",
        "PayloadError",
        "PayloadTooLargeError",
        "SETTINGS_KEY",
        "TopicError",
        "ValueTooLongError",
        "metadata",
        "outbox_table",
        "publish",
        "publish_async",
    ]


def test_outbox_jobs_exports() -> None:
    """A submodule, imported by the apps that enqueue jobs: `outbox.__all__` does not name it."""
    assert sorted(outbox.jobs.__all__) == ["JobError", "enqueue", "enqueue_async"]


def test_relay_exports() -> None:
    assert sorted(relay.__all__) == [
        "AdvisoryLeases",
        "Batch",
        "CaptureSource",
        "CapturedRow",
        "Checkpoints",
        "FencedError",
        "Leases",
        "Position",
        "PostgresCapture",
        "Relay",
        "RelayError",
        "RelayService",
        "RelaySettings",
        "RelayStats",
        "Shard",
        "SoleLease",
        "SqliteCapture",
        "TransactionalPublisher",
        "relay_from_settings",
    ]


def test_sink_exports() -> None:
    assert sorted(sink.__all__) == [
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


def test_verify_exports() -> None:
    assert sorted(verify.__all__) == ["Findings", "VerifySettings", "verify"]


def test_every_exported_name_exists() -> None:
    for module in (wire, outbox, outbox.jobs, relay, sink, verify):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
