"""A stand-in OpenTelemetry collector for the tests that run outboxkit (or a Dramatiq worker) as
OS processes: an OTLP/HTTP trace endpoint on loopback that decodes the protobuf export requests
the processes' SDK sends and keeps every span (fixture `collector` in tests/conftest.py)."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ExportedSpan


@dataclass(frozen=True)
class Received:
    """A span as the collector received it, with the service that sent it."""

    service: str
    span: ExportedSpan

    @property
    def attributes(self) -> dict[str, Any]:
        return {kv.key: _value(kv) for kv in self.span.attributes}

    @property
    def links(self) -> list[tuple[bytes, bytes]]:
        return [(link.trace_id, link.span_id) for link in self.span.links]


def _value(kv: KeyValue) -> Any:
    return getattr(kv.value, kv.value.WhichOneof("value"))


class Collector:
    """An OTLP/HTTP trace endpoint on loopback: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.keep(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def keep(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = {kv.key: _value(kv) for kv in resource_spans.resource.attributes}["service.name"]
            for scope_spans in resource_spans.scope_spans:
                self.spans += [Received(service, span) for span in scope_spans.spans]

    def named(self, name: str) -> list[Received]:
        return [received for received in self.spans if received.span.name == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
