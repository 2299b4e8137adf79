"""What the relay and the sink show to the outside: Prometheus metrics and Kubernetes probes.

Deliberately small — a registry of named numbers and a standard-library HTTP server — so the
sidecars need no exporter package and cost nothing when nobody scrapes them:

* `/metrics` — Prometheus text format; gauges that cost a query (backlog, lag) are read at
  scrape time through callbacks, never on the publishing path;
* `/healthz` — liveness: the main loop went round recently (a hung process gets restarted);
* `/readyz` — readiness: the process reached its database and Kafka since its last failure. A
  standby relay is ready too: it must not make its application pod unready.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated

from pydantic import Field, IPvAnyAddress

log = logging.getLogger("outboxkit.observe")

# Every interface by default: the endpoints are off until a port is set, and whoever sets one
# wants them reached from outside the process's network namespace — the kubelet probes the pod
# IP, Prometheus scrapes it — where loopback would fail the probes and restart the pod in a loop.
# They show counters and health, no secret; 127.0.0.1 keeps them to the host (or the pod).
HttpHost = Annotated[
    IPvAnyAddress,
    Field(
        description="Address /metrics, /healthz and /readyz listen on: 0.0.0.0 every IPv4 interface, "
        "127.0.0.1 this host only, :: every interface (IPv6 and IPv4)."
    ),
]
EVERY_INTERFACE = IPv4Address("0.0.0.0")  # noqa: S104 - see HttpHost


@dataclass
class Metrics:
    """Counters and gauges by name (`outboxkit_relay_published_total`, ...), safe across threads."""

    help: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (type, help text)
    values: dict[str, float] = field(default_factory=dict)
    readers: dict[str, Callable[[], float]] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def counter(self, name: str, text: str, read: Callable[[], float] | None = None) -> None:
        self._register(name, "counter", text, read)

    def gauge(self, name: str, text: str, read: Callable[[], float] | None = None) -> None:
        self._register(name, "gauge", text, read)

    def _register(self, name: str, kind: str, text: str, read: Callable[[], float] | None) -> None:
        self.help[name] = (kind, text)
        if read is None:
            self.values.setdefault(name, 0.0)
        else:
            self.readers[name] = read

    def add(self, name: str, amount: float = 1.0) -> None:
        with self._guard:
            self.values[name] = self.values.get(name, 0.0) + amount

    def set(self, name: str, value: float) -> None:
        with self._guard:
            self.values[name] = value

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        with self._guard:
            current = dict(self.values)
        for name, read in self.readers.items():
            try:
                current[name] = read()
            except Exception as exc:  # noqa: BLE001 - a failing gauge must not fail the scrape
                log.warning("metric %s unavailable: %s", name, exc)
        lines: list[str] = []
        for name, (kind, text) in sorted(self.help.items()):
            if name in current:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {current[name]:g}"]
        return "\n".join(lines) + "\n"


@dataclass
class Health:
    """Heartbeat of the main loop and the outcome of its last attempt."""

    stale_after: float = 60.0
    _beat: float = field(default_factory=time.monotonic)
    _ok: bool = False

    def beat(self, *, ok: bool) -> None:
        self._beat, self._ok = time.monotonic(), ok

    @property
    def live(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after

    @property
    def ready(self) -> bool:
        return self.live and self._ok


def serve(
    port: int, metrics: Metrics, health: Health, host: IPv4Address | IPv6Address | str = EVERY_INTERFACE
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on `host`:`port` from a daemon thread; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes = {
                "/metrics": (200, metrics.render()),
                "/healthz": (200, "ok\n") if health.live else (503, "main loop stalled\n"),
                "/readyz": (200, "ready\n") if health.ready else (503, "not ready\n"),
            }
            status, body = routes.get(self.path, (404, "not found\n"))
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET

    server = Server((str(host), port), Handler)
    threading.Thread(target=server.serve_forever, name="outboxkit-http", daemon=True).start()
    return server
