"""Span links from the trace context each event carries, so one trace runs app -> relay -> Kafka
-> sink.

The app injects its context at write time (`outbox.tracing`); the relay's and the sink's spans
link to it, extracted with the globally configured propagator (W3C `traceparent` by default), and
carry the messaging semantic conventions' attributes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.propagate import extract

# Messaging semantic conventions (opentelemetry.io/docs/specs/semconv/messaging): the keys the
# relay's PRODUCER and the sink's CONSUMER spans carry, spelled once (the semconv package holds
# them only in its `_incubating` modules).
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_DESTINATION: Final = "messaging.destination.name"
MESSAGING_PARTITION: Final = "messaging.destination.partition.id"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_BATCH_COUNT: Final = "messaging.batch.message_count"
MESSAGING_CONSUMER_GROUP: Final = "messaging.consumer.group.name"
MESSAGING_KAFKA_KEY: Final = "messaging.kafka.message.key"
MESSAGING_KAFKA_OFFSET: Final = "messaging.kafka.offset"

Attributes = dict[str, str | int]


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


def messaging_attributes(operation: str, kind: str, count: int, topics: Collection[str]) -> Attributes:
    """The attributes every relay and sink span carries: Kafka, the operation (`kind` is the
    semconv operation type: send, process), the batch size, and the topic when it is one alone."""
    attributes: Attributes = {
        MESSAGING_SYSTEM: "kafka",
        MESSAGING_OPERATION_TYPE: kind,
        MESSAGING_OPERATION_NAME: operation,
        MESSAGING_BATCH_COUNT: count,
    }
    if len(topics) == 1:
        [attributes[MESSAGING_DESTINATION]] = topics
    return attributes
