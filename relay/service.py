"""The relay service: the sidecar's main loop over the shards this process holds.

Leases -> one `Relay` per held shard -> step each -> clean up -> wait for work, and again. It owns
no guarantee itself (those live in capture, publisher, checkpoints and leases); it keeps the
process going — retrying what is retriable with backoff, standing by when a lease is lost,
honouring a stop request between transactions — and shows what happens (metrics, probes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from relay import names
from relay.capture.source import Backlog, Position
from relay.errors import (
    CaptureError,
    FencedError,
    KafkaFatalError,
    LeaseLostError,
    PublishAbortedError,
    RelayError,
    UnsafeOutboxError,
)
from relay.leases import Leases
from relay.shards import Shard
from relay.stats import RelayStats
from relay.wakeup import Listener, wait_readable
from runtime.backoff import Backoff
from runtime.observe import EVERY_INTERFACE, Health, Histogram, Metrics, serve
from runtime.startup import StartWindow

log = logging.getLogger(names.LOGGER)


class ShardRelay(Protocol):
    """What the loop needs of one shard's relay (`relay.run.Relay`): started, it is stepped,
    asked for its backlog, cleaned up after, and closed; it counts what it does itself."""

    def step(self) -> int:
        """Publish the next batch, if any; return how many events it held."""
        ...

    def backlog(self) -> Backlog: ...

    def delete_published(self, limit: int, created_before: datetime | None) -> int: ...

    def close(self) -> None: ...

    def wakeup_fd(self) -> int | None:
        """What to wait on for work when idle, if its capture has one (`CaptureSource.wakeup_fd`)."""
        ...

    @property
    def caught_up(self) -> bool:
        """Whether the last step reached the end of what had committed: one that published
        nothing only for lack of time is no reason to idle, nor for a drain to stop."""
        ...

    @property
    def stats(self) -> RelayStats:
        """What the relay has done so far: a copy, read-only to the loop."""
        ...


@dataclass(frozen=True)
class Cleanup:
    """Deleting published rows: `batch` rows per statement, for at most `budget` seconds every
    `interval` seconds, keeping rows younger than `retention` seconds."""

    interval: float = 5.0
    batch: int = 5000
    budget: float = 1.0
    retention: float = 0.0


class RelayService:
    """Runs a relay for every shard this process holds a lease on; the sidecar's main loop."""

    def __init__(
        self,
        leases: Leases,
        relay_for: Callable[[Shard], ShardRelay],
        *,
        poll_interval: float = 0.5,
        lease_interval: float = 1.0,
        cleanup: Cleanup | None = None,
        listener: Listener | None = None,
        http_port: int | None = None,
        http_host: IPv4Address | IPv6Address = EVERY_INTERFACE,
        backoff: Backoff | None = None,
        start_timeout: float | None = None,
        histograms: Sequence[Histogram] = (),
        health: Health | None = None,
        kafka_check: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._relay_for = relay_for
        self._poll_interval = poll_interval
        self._lease_interval = lease_interval
        self._cleanup = cleanup
        self._next_cleanup = 0.0
        self._idle = listener.wait if listener is not None else sleep
        self._listener = listener
        self._http_port = http_port
        self._http_host = http_host
        self.health = health or Health()
        self._kafka_check = kafka_check  # asked when idle: nothing else would notice Kafka go or come back
        self.metrics = self._metrics(histograms)
        self._retired = RelayStats()  # totals of relays whose shard this process gave up
        self._backoff = backoff or Backoff(sleep=sleep)
        self._sleep = sleep
        self._clock = clock
        self._active: dict[Shard, ShardRelay] = {}
        self._held: frozenset[Shard] = frozenset()
        self._next_refresh = 0.0
        self._start_timeout = start_timeout
        self._failure: Exception | None = None  # the last one: of the leases, a shard's start, a step
        self._leases_answer = True  # False while the lease database does not answer

    @property
    def active(self) -> frozenset[Shard]:
        return frozenset(self._active)

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> RelayStats:
        """Loop until `should_stop()`; with `drain`, also stop once the held shards are caught up.

        Start-up lasts until a round goes through whole: the lease database answered, every held
        shard started and stepped. With a `start_timeout`, failing that long raises
        StartTimeoutError; after start-up, failures are retried for as long as they last."""
        server = (
            serve(self._http_port, self.metrics, self.health, self._http_host)
            if self._http_port is not None
            else None
        )
        starting = StartWindow(self._start_timeout, clock=self._clock) if self._start_timeout else None
        try:
            while not should_stop():
                self._refresh_leases()
                try:
                    published = self._step_all()
                except RelayError as exc:
                    if not should_stop() or isinstance(exc, FencedError):
                        raise
                    log.warning("stopping with Kafka unreachable: %s", exc)
                    break
                starting = self._still_starting(starting, published)
                self._clean_up()
                why = self._why_not_whole(published)
                self.health.beat(ok=why is None, why=why or "")
                if published is None:
                    continue  # a failure: the backoff has already waited
                self._backoff.reset()
                if published == 0 and all(relay.caught_up for relay in self._active.values()):
                    if drain and why is None:
                        break
                    self._wait_for_work()
        finally:
            self._close(server)
        return self.stats()

    def _wait_for_work(self) -> None:
        """Until a shard may have work, for at most the poll interval: on the sockets of the
        shards' captures if each has one (WAL capture: woken by the commit itself), else for the
        app's NOTIFY (or the interval alone). An idle relay refreshes its leases once per wait
        (hence `RelaySettings`' bound on the poll interval)."""
        if self._kafka_check is not None:
            self._kafka_check()
        sockets = [fd for relay in self._active.values() if (fd := relay.wakeup_fd()) is not None]
        if self._active and len(sockets) == len(self._active):
            wait_readable(sockets, self._poll_interval)
        else:
            self._idle(self._poll_interval)

    def _still_starting(self, starting: StartWindow | None, published: int | None) -> StartWindow | None:
        """The start-up window after this round: gone once a round went through whole; while it is
        open, a failure that has lasted `start_timeout` raises StartTimeoutError."""
        if starting is None or self._why_not_whole(published) is None:
            return None
        if self._failure is not None:
            starting.check("starting the relay", self._failure)
        return starting

    def _close(self, server: ThreadingHTTPServer | None) -> None:
        """Let go of what `run` holds, however it ends: producers, leases, listener, HTTP server."""
        for relay in self._active.values():
            relay.close()
        self._leases.close()
        if self._listener is not None:
            self._listener.close()
        if server is not None:
            server.shutdown()

    def stats(self) -> RelayStats:
        """Totals since start; the position is the first active shard's."""
        active = [self._active[shard].stats for shard in sorted(self._active)]
        total = RelayStats(position=active[0].position if active else Position())
        for stats in [self._retired, *active]:
            total.add(stats)
        return total

    def _metrics(self, histograms: Sequence[Histogram]) -> Metrics:
        """The counters read from the relays' stats and the gauges at scrape time (see
        `relay.names`), and the histograms the shards' relays fill."""
        metrics = Metrics()
        for stat, (name, text) in names.COUNTERS.items():
            metrics.counter(name, text, partial(self._total, stat))
        metrics.gauge(*names.SHARDS_HELD, lambda: float(len(self._active)))
        metrics.gauge(*names.SHARDS_UNHELD, lambda: float(self._leases.unheld))
        metrics.gauge(*names.READY, lambda: float(self.health.ready))
        metrics.gauge(*names.BACKLOG_EVENTS, self._backlog_rows)
        metrics.gauge(*names.OLDEST_UNPUBLISHED, self._oldest_age)
        metrics.gauge(*names.SLOT_LAG_BYTES, partial(self._most, "lag_bytes"))
        metrics.gauge(*names.SLOT_LAG_SECONDS, partial(self._most, "lag_seconds"))
        for histogram in histograms:
            metrics.histogram(histogram)
        return metrics

    def _why_not_whole(self, published: int | None) -> str | None:
        """Why this round did not go through whole (None if it did: the leases answered, each held
        shard started and stepped): what readiness says. A standby whose database answers is whole."""
        if not self._leases_answer:
            return "the database does not answer (leases)"
        waiting = self._held - self._active.keys()
        if waiting:
            return f"cannot start publishing {', '.join(map(str, sorted(waiting)))} yet: {self._failure}"
        if published is None:
            return str(self._failure).splitlines()[0]
        return None

    def _total(self, name: str) -> float:
        return float(getattr(self.stats(), name))

    def _backlogs(self) -> list[Backlog]:
        return [relay.backlog() for relay in list(self._active.values())]

    def _backlog_rows(self) -> float:
        return float(sum(backlog.rows for backlog in self._backlogs()))

    def _oldest_age(self) -> float:
        oldest = [backlog.oldest for backlog in self._backlogs() if backlog.oldest is not None]
        return (datetime.now(UTC) - min(oldest)).total_seconds() if oldest else 0.0

    def _most(self, lag: str) -> float:
        """The largest slot lag (`Backlog.lag_bytes` or `lag_seconds`) of the held shards; 0 for
        sources without a slot."""
        found = [getattr(backlog, lag) for backlog in self._backlogs()]
        return float(max((value for value in found if value is not None), default=0))

    def _refresh_leases(self) -> None:
        if self._clock() < self._next_refresh:
            return
        self._next_refresh = self._clock() + self._lease_interval
        try:
            self._held = self._leases.refresh()
            self._leases_answer = True
        except LeaseLostError as exc:  # its connection is gone: not ready until the database answers
            log.warning("%s; standing by until a lease can be taken again", exc)
            self._held, self._leases_answer = frozenset(), False
        except CaptureError as exc:  # the database does not answer (the leases log it)
            self._failure, self._leases_answer = exc, False
            self._held = frozenset()
        for shard in self._active.keys() - self._held:
            log.warning("no longer holds the lease of %s: stopped publishing it", shard)
            self._retire(shard)
        self._start(self._held - self._active.keys())

    def _start(self, shards: frozenset[Shard]) -> None:
        """Start a relay for each of `shards`, side by side, and publish none before all are started.

        Each start fences the shard's previous producer and reads its checkpoint back, about 1.1 s;
        one after the other, a successor taking over four shards published nothing for 5-6 s.
        """
        if not shards:
            return
        with ThreadPoolExecutor(len(shards), thread_name_prefix="outboxkit-relay-start") as pool:
            starting = {shard: pool.submit(self._relay_for, shard) for shard in sorted(shards)}
            # A start waits up to Kafka's timeouts (30 s each) when the broker is away: the loop is
            # waiting, not hung, so liveness must not restart the process meanwhile.
            while wait(starting.values(), timeout=1.0).not_done:
                self.health.turned()
        fatal: RelayError | None = None
        for shard, started in starting.items():
            try:
                self._active[shard] = started.result()
            except (FencedError, KafkaFatalError) as exc:
                fatal = fatal or exc  # raised once the shards that did start are active (closed at exit)
            except RelayError as exc:
                self._failure = exc
                log.warning("cannot start publishing %s yet (%s); retrying", shard, exc)
        if fatal is not None:
            raise fatal

    def _clean_up(self) -> None:
        if self._cleanup is None or self._clock() < self._next_cleanup:
            return
        self._next_cleanup = self._clock() + self._cleanup.interval
        created_before = (
            datetime.now(UTC) - timedelta(seconds=self._cleanup.retention)
            if self._cleanup.retention
            else None
        )
        deadline = self._clock() + self._cleanup.budget
        for relay in self._active.values():
            try:
                while relay.delete_published(self._cleanup.batch, created_before) == self._cleanup.batch:
                    if self._clock() > deadline:
                        return  # the rest next time: publishing comes first
            except UnsafeOutboxError:
                raise
            except CaptureError as exc:
                log.warning("cleanup postponed: %s", exc)

    def _retire(self, shard: Shard) -> None:
        gone = self._active.pop(shard)
        gone.close()
        self._retired.add(gone.stats)

    def _step_all(self) -> int | None:
        published = 0
        for shard, relay in list(self._active.items()):
            try:
                published += relay.step()
            except UnsafeOutboxError:
                raise  # retrying cannot help, and cleanup must not delete what it found
            except (CaptureError, PublishAbortedError) as exc:
                self._failure = exc
                log.warning("%s; retried after %.1fs", exc, self._backoff.wait())
                return None
            except KafkaFatalError as exc:
                self._failure = exc
                # The producer is unusable, the shard is not: it gets a new producer at the next
                # lease refresh, as a restarted process would (which fences the old epoch and
                # resumes from the checkpoint). Seen when the broker restarts mid-transaction.
                log.warning("%s; %s gets a new producer after %.1fs", exc, shard, self._backoff.wait())
                self._retire(shard)
                self._next_refresh = 0.0
                return None
        return published
