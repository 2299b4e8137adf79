"""What the relay and the sink show to the outside: Prometheus metrics and Kubernetes probes.

Small on purpose, so the sidecars cost nothing when nobody scrapes them:

* `/metrics` — Prometheus text format, rendered by `prometheus_client`. Counters and gauges are
  read at scrape time through callbacks (a custom collector), never on the publishing path; the
  latency histograms are counted once per batch (`Histogram.observe_ages`). Only this endpoint
  runs the callbacks, some of which query the database (the relay's backlog);
* `/healthz` — liveness: the main loop went round recently — waiting for a service that is away
  counts as going round — so only a hung process gets restarted. It answers from the moment the
  process starts, so it is also what a startup probe asks;
* `/readyz` — readiness: the process can do its job now — its last round went through and its
  Kafka clients do not report the cluster unreachable. The body says why not.

The probes read flags the main loop sets (`Health`), never a query: with a backlog gauge taking
2 s, a probe that ran the gauges took 2.01 s against the kubelet's default timeout of 1 s.

Why `prometheus_client` and not OpenTelemetry metrics with its Prometheus exporter: that exporter
is itself built on `prometheus_client`, and adds the metrics SDK on top (~30 ms more to import,
more resident memory) and ~1.3 µs per recorded value under its own locks, where the sink settles
~30k events/s; it also renames what it exports (unit suffixes, a `target_info` series), which
would break the names dashboards and alerts use today. `prometheus_client` is the reference
exposition, has no dependencies, and its families take values we already count (the relay's
and the sink's stats), so the hot path gains no work but the histograms' one pass per batch.
Spans stay OpenTelemetry's (`runtime.telemetry`).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address, ip_address
from itertools import accumulate
from typing import Annotated, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
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

# Seconds from an event's write to the outbox to a step of its way: tens of milliseconds when the
# relay is woken by NOTIFY, about a poll interval when it polls, up to hours for a backlog.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class Metrics(Collector):
    """Counters and gauges by name (`outboxkit_relay_published_total`, ...), each read from a
    callback at scrape time, and histograms; rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self._families: list[tuple[str, str, str, Callable[[], float]]] = []  # kind, name, help, read
        self._histograms: list[Histogram] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def counter(self, name: str, text: str, read: Callable[[], float]) -> None:
        self._families.append(("counter", name, text, read))

    def gauge(self, name: str, text: str, read: Callable[[], float]) -> None:
        self._families.append(("gauge", name, text, read))

    def histogram(self, histogram: Histogram) -> Histogram:
        self._histograms.append(histogram)
        return histogram

    def collect(self) -> Iterator[Metric]:
        for kind, name, text, read in self._families:
            try:
                value = read()
            except Exception as exc:  # noqa: BLE001 - a failing gauge must not fail the scrape
                log.warning("metric %s unavailable: %s", name, exc)
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, text, value=value)
        for histogram in self._histograms:
            yield histogram.family()

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self._registry).decode()


class Histogram:
    """A latency histogram in seconds, counted a batch at a time: one pass and one lock per batch,
    where `prometheus_client.Histogram.observe` takes a lock per value (~0.8 µs; ~0.25 µs here)."""

    def __init__(self, name: str, text: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.text = name, text
        self._bounds = [*buckets, math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._guard = threading.Lock()

    def observe_ages(self, times: Iterable[datetime], now: datetime | None = None) -> None:
        """Count how long ago each of `times` was (aware datetimes), as of `now`."""
        now = now or datetime.now(UTC)
        counts, total, bounds = [0] * len(self._bounds), 0.0, self._bounds
        for then in times:
            age = (now - then).total_seconds()
            counts[bisect_left(bounds, age)] += 1
            total += age
        with self._guard:
            self._counts = [mine + more for mine, more in zip(self._counts, counts, strict=True)]
            self._sum += total

    def family(self) -> HistogramMetricFamily:
        with self._guard:
            counts, total = self._counts, self._sum
        buckets = [
            ("+Inf" if bound == math.inf else str(bound), float(count))
            for bound, count in zip(self._bounds, accumulate(counts), strict=True)
        ]
        return HistogramMetricFamily(self.name, self.text, buckets=buckets, sum_value=total)


class Reachability(Protocol):
    """Whether a service is known to be away (`runtime.kafka.ClientLog` for the Kafka clients)."""

    @property
    def unreachable(self) -> str | None:
        """What is unreachable, said for the operator; None while nothing says so."""
        ...


@dataclass
class Health:
    """Heartbeat of the main loop and the outcome of its last round: flags the probes read.

    Thread-safe as far as the probes need: each flag is one attribute, set by the main loop and
    read by the HTTP threads."""

    stale_after: float = 60.0
    services: list[Reachability] = field(default_factory=list)  # each may make it unready
    _beat: float = field(default_factory=time.monotonic)
    _why: str | None = "starting"  # None: the last round did its job

    def beat(self, *, ok: bool, why: str = "the last round failed") -> None:
        """The main loop went round; `ok`: it did its job, else `why` not."""
        self._beat, self._why = time.monotonic(), None if ok else why

    def turned(self) -> None:
        """The process is alive and waiting for something (a service at start-up): live, not ready."""
        self._beat = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after

    @property
    def not_ready(self) -> str | None:
        """Why the process cannot do its job now; None when it can."""
        if not self.live:
            return "main loop stalled"
        away = next((why for service in self.services if (why := service.unreachable)), None)
        return away or self._why

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    def liveness(self) -> tuple[int, str]:
        return (200, "ok\n") if self.live else (503, "main loop stalled\n")

    def readiness(self) -> tuple[int, str]:
        why = self.not_ready
        return (200, "ready\n") if why is None else (503, f"not ready: {why}\n")


class ServiceCheck:
    """A service the main loop asks when it has nothing else to do, at most every `interval`
    seconds, so that an idle process is not ready while the service is down (a `Reachability`).

    A sink with nothing to write would otherwise say ready for as long as its warehouse is gone."""

    def __init__(
        self,
        what: str,
        answers: Callable[[], bool],
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what, self._answers = what, answers
        self._interval, self._clock = interval, clock
        self._next = 0.0
        self._down = False

    def __call__(self) -> None:
        if self._clock() >= self._next:
            self._next = self._clock() + self._interval
            self._down = not self._answers()

    @property
    def unreachable(self) -> str | None:
        return f"{self._what} does not answer" if self._down else None


class Endpoints:
    """A process's metrics and probes, served from its very start: while it waits for its
    services it is live (`Health.turned`) and not ready, instead of refusing connections."""

    def __init__(
        self,
        port: int | None,
        host: IPv4Address | IPv6Address = EVERY_INTERFACE,
        *,
        services: Sequence[Reachability] = (),
    ) -> None:
        self.metrics = Metrics()
        self.health = Health(services=list(services))
        self._server = serve(port, self.metrics, self.health, host) if port is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def serve(
    port: int, metrics: Metrics, health: Health, host: IPv4Address | IPv6Address | str = EVERY_INTERFACE
) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on `host`:`port` from a daemon thread; returns the server."""

    # Each route is called for its own path only: the probes never render the metrics.
    routes: dict[str, Callable[[], tuple[int, str]]] = {
        "/metrics": lambda: (200, metrics.render()),
        "/healthz": health.liveness,
        "/readyz": health.readiness,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path)
            status, body = route() if route is not None else (404, "not found\n")
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)  # what generate_latest writes
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
