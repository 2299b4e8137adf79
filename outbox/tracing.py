"""Trace context captured with each event, so one trace runs app -> relay -> Kafka -> sink.

The current OpenTelemetry context is injected with the globally configured propagator (W3C
`traceparent`/`tracestate` by default) at write time, while the request's span is still current.
The processes read it back with `runtime.tracing`.
"""

from __future__ import annotations

from opentelemetry import context
from opentelemetry.propagate import inject


def current_trace_headers() -> dict[str, str]:
    """Headers carrying the active trace context; empty when no span is recording."""
    carrier: dict[str, str] = {}
    if context.get_current():  # propagators inject what the context holds: nothing in an empty one
        inject(carrier)
    return carrier
