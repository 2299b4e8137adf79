"""One trace from the app's request through the relay to the sink, across processes.

`outboxkit relay run --drain` and `outboxkit sink run --drain` run as OS processes configured by
the standard OTEL_* variables; their SDK exports over OTLP/HTTP to a collector stand-in
(tests/otlp.py), which decodes the protobuf export requests. The app's span is opened by the
test around its write.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ExportedSpan
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanContext
from sqlalchemy import create_engine, make_url
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from runtime.kafka import KafkaSettings
from runtime.telemetry import tracer_provider
from tests.conftest import PgSchema
from tests.models import Base, Thing
from tests.otlp import Collector
from tests.processes import outboxkit


def write_in_requests(url: str, topic: str, count: int) -> list[SpanContext]:
    """`count` app requests, each one span around one committed write; their span contexts."""
    app_tracer = TracerProvider().get_tracer("the app")
    settings = OutboxSettings(topic_template=topic, notify_channel="")
    engine = create_engine(url)
    written = []
    try:
        for n in range(count):
            with (
                app_tracer.start_as_current_span(f"POST /things/{n}") as span,
                Session(engine, info={SETTINGS_KEY: settings}) as session,
            ):
                session.add(Thing(group=f"g{n}", n=n))
                session.commit()
                written.append(span.get_span_context())
    finally:
        engine.dispose()
    return written


def test_one_trace_runs_from_the_app_span_through_the_relay_producer_span_to_the_sink_consumer_span(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    collector: Collector,
    tmp_path: Path,
) -> None:
    topic = new_topic(1)
    url = make_url(pg_schema.url).update_query_dict(pg_schema.connect_args).render_as_string(False)
    app = create_engine(url)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    app.dispose()
    written = write_in_requests(url, topic, 2)
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
    group = unique_name("g")

    relay = outboxkit(
        "relay",
        "run",
        "--drain",
        env=tracing
        | {
            "OUTBOXKIT_RELAY_DATABASE_URL": url,
            "OUTBOXKIT_RELAY_SOURCE_ID": unique_name("src"),
            "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": unique_name("ckpt"),
            "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        },
    )
    assert relay.returncode == 0, relay.stderr
    sink = outboxkit(
        "sink",
        "run",
        "--drain",
        env=tracing
        | {
            "OTEL_SERVICE_NAME": "warehouse-loader",  # the standard variable wins over the default
            "OUTBOXKIT_SINK_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
            "OUTBOXKIT_SINK_GROUP_ID": group,
            "OUTBOXKIT_SINK_TABLES": json.dumps([{"topic": topic, "table": "things"}]),
            "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        },
    )
    assert sink.returncode == 0, sink.stderr
    assert "2 applied" in sink.stderr

    app_spans = [(context.trace_id.to_bytes(16), context.span_id.to_bytes(8)) for context in written]
    [produced] = collector.named("outboxkit.relay publish")
    assert produced.service == "outboxkit-relay"
    assert produced.span.kind == ExportedSpan.SPAN_KIND_PRODUCER
    assert produced.links == app_spans
    assert produced.attributes == {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.batch.message_count": 2,
    }
    [consumed] = collector.named("outboxkit.sink batch")
    assert consumed.service == "warehouse-loader"
    assert consumed.span.kind == ExportedSpan.SPAN_KIND_CONSUMER
    assert consumed.links == app_spans
    assert consumed.attributes == {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": "0",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.consumer.group.name": group,
        "messaging.batch.message_count": 2,
    }


ENDPOINT = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}


def test_without_an_otlp_endpoint_nothing_is_configured_and_spans_cost_nothing() -> None:
    assert tracer_provider("outboxkit-relay", {}) is None
    assert tracer_provider("outboxkit-relay", {"OTEL_SDK_DISABLED": "true", **ENDPOINT}) is None
    assert tracer_provider("outboxkit-relay", {"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}) is None
    provider = tracer_provider("outboxkit-relay", ENDPOINT)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "outboxkit-relay"
    provider.shutdown()


def test_an_endpoint_without_the_exporter_installed_is_said_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)

    assert tracer_provider("outboxkit-sink", ENDPOINT) is None

    [said] = caplog.records
    assert said.levelname == "ERROR"
    assert said.getMessage() == (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:4318/v1/traces is set, but the OTLP "
        "exporter is not installed: no span is exported. Install it with "
        "`pip install 'outboxkit[otlp]'`, or unset the variable"
    )
