"""Span links from the trace context each event carries, so one trace runs app -> relay -> Kafka
-> sink.

The app injects its context at write time (`outbox.tracing`); the relay's and the sink's spans
link to it, extracted with the globally configured propagator (W3C `traceparent` by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.propagate import extract


def span_context_from(headers: Mapping[str, str]) -> trace.SpanContext | None:
    """The span an event was written in, from its headers; None if it carries no valid context."""
    context = trace.get_current_span(extract(headers)).get_span_context()
    return context if context.is_valid else None


def span_contexts(
    header_sets: Iterable[Iterable[tuple[str, bytes]]], most: int = 128
) -> list[trace.SpanContext]:
    """The write-time span contexts found in the first `most` header sets: a bounded cost per
    batch, for linking a relay or sink span to the spans its events were written in."""
    found: list[trace.SpanContext] = []
    for count, headers in enumerate(header_sets):
        if count >= most:
            break
        decoded = {name: value.decode(errors="replace") for name, value in headers}
        context = span_context_from(decoded) if decoded else None
        if context is not None:
            found.append(context)
    return found
