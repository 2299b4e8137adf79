"""The OpenTelemetry SDK of a relay or sink process, configured from the standard `OTEL_*` variables.

Spans are exported only where someone collects them: with `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, a TracerProvider sends them in batches over OTLP/HTTP
(the exporter reads its endpoint, headers, timeout and compression from the same variables);
otherwise nothing is configured, the API's tracer is a no-op and a span costs next to nothing.
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off as the specification says, and
`OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` win over the process's default service name.

The exporter is the `otlp` extra (`pip install 'outboxkit[otlp]'`): a process asked to export
without it says so at start, and runs untraced rather than not at all. The SDK itself is imported
only then (~40 ms and some MiB a process that exports nothing does not pay).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_SDK_DISABLED,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("outboxkit.telemetry")
ENDPOINTS = (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT)


def exporting(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for spans to be exported over OTLP."""
    if environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return False
    if environ.get(OTEL_TRACES_EXPORTER, "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name) for name in ENDPOINTS)


def tracer_provider(service: str, environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A TracerProvider exporting over OTLP/HTTP as `service` (unless the environment names it),
    or None when nothing is to be exported or the exporter is not installed (said once, here)."""
    if not exporting(environ):
        return None
    exporter = _otlp_exporter()
    if exporter is None:
        endpoint = next(f"{name}={environ[name]}" for name in ENDPOINTS if environ.get(name))
        log.error(
            "%s is set, but the OTLP exporter is not installed: no span is exported. Install it "
            "with `pip install 'outboxkit[otlp]'`, or unset the variable",
            endpoint,
        )
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 - see the module's docstring
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create({SERVICE_NAME: service}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _otlp_exporter() -> SpanExporter | None:
    """The OTLP/HTTP span exporter, configured by the `OTEL_EXPORTER_OTLP_*` variables; None
    without the `otlp` extra."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415 - the otlp extra
            OTLPSpanExporter,
        )
    except ImportError:
        return None
    return OTLPSpanExporter()


@contextmanager
def traced(service: str) -> Iterator[None]:
    """For the block, the process's tracer provider is the one the environment asks for (if any);
    after it, the spans still queued are exported before the provider shuts down."""
    provider = tracer_provider(service)
    if provider is None:
        yield
        return
    trace.set_tracer_provider(provider)
    log.info("exporting spans over OTLP as %s", provider.resource.attributes["service.name"])
    try:
        yield
    finally:
        provider.shutdown()
