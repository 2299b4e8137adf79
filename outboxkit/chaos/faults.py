"""The fault injector: one fault every few seconds, chosen at random (each kind once before any
twice), counted by kind.

Process faults: SIGKILL a relay or a sink (and start it again), SIGSTOP a relay past its lease
timeout (it resumes as a zombie: its successor holds the shards and the same transactional id),
start an extra relay for the same outbox, add a sink to the group and later take one away (a
rebalance each time). Service faults — stopping Kafka or PostgreSQL and starting them again — go
through the `restart` callable, only where the harness may touch the services.
"""

from __future__ import annotations

import random
import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from outboxkit.chaos.processes import Proc

Restart = Callable[[str], None]  # "kafka" | "postgres": down, wait, up


@dataclass
class Fleet:
    """The processes under test and how to make more of them."""

    relays: list[Proc]
    sinks: list[Proc]
    spawn: Callable[[str], Proc]
    extra: list[Proc] = field(default_factory=list)

    def heal(self, *, resume: bool) -> list[str]:
        """Restart the exited (and with `resume`, wake the paused); returns what exited unasked."""
        exited = []
        for proc in [*self.relays, *self.sinks]:
            if proc.paused and resume:
                proc.signal(signal.SIGCONT)
            if proc.paused:
                continue
            if not proc.alive:
                code = proc.popen.returncode if proc.popen is not None else None
                exited.append(f"{proc.role}-{proc.number} exited {code}")
                proc.start()
        return exited

    def all(self) -> list[Proc]:
        return [*self.relays, *self.sinks, *self.extra]


class Injector:
    """Picks and applies faults; `counts` says how many of each kind were injected."""

    def __init__(
        self, fleet: Fleet, rng: random.Random, *, pause_seconds: float, restart: Restart | None
    ) -> None:
        self._fleet, self._rng, self._pause, self._restart = fleet, rng, pause_seconds, restart
        self.counts: Counter[str] = Counter()
        self._faults: dict[str, tuple[float, Callable[[], str | None]]] = {
            "kill relay": (3, self._kill_relay),
            "kill sink": (3, self._kill_sink),
            "pause relay": (2, self._pause_relay),
            "extra relay": (1, self._extra_relay),
            "add sink": (1, self._add_sink),
            "remove sink": (1, self._remove_sink),
        }
        if restart is not None:
            self._faults["restart postgres"] = (1, lambda: restart("postgres"))
            self._faults["restart kafka"] = (0.5, lambda: restart("kafka"))

    def inject(self) -> str:
        """One fault: of a kind not injected yet while there is one (so a short run meets every
        kind), then of any kind, by weight."""
        kinds = [kind for kind in self._faults if kind not in self.counts] or list(self._faults)
        kind = self._rng.choices(kinds, [self._faults[k][0] for k in kinds])[0]
        done = self._faults[kind][1]() or kind  # a fault may turn into another (no sink to remove)
        self.counts[done] += 1
        return done

    def _kill_relay(self) -> str | None:
        victim = self._rng.choice(self._fleet.relays)
        victim.kill()
        victim.start()
        return None

    def _kill_sink(self) -> str | None:
        victim = self._rng.choice(self._fleet.sinks)
        victim.kill()
        victim.start()
        return None

    def _pause_relay(self) -> str | None:
        victim = self._rng.choice(self._fleet.relays)
        victim.signal(signal.SIGSTOP)
        threading.Timer(self._pause, victim.signal, args=(signal.SIGCONT,)).start()
        return None

    def _extra_relay(self) -> str | None:
        """Another relay for the same outbox: it must stand by or be fenced, never duplicate."""
        extra = self._fleet.spawn("relay")
        extra.start()
        self._fleet.extra.append(extra)
        threading.Timer(self._pause, extra.stop).start()
        return None

    def _add_sink(self) -> str | None:
        sink = self._fleet.spawn("sink")
        sink.start()
        self._fleet.sinks.append(sink)
        return None

    def _remove_sink(self) -> str | None:
        if len(self._fleet.sinks) < 2:
            self._add_sink()
            return "add sink"
        self._fleet.sinks.pop(self._rng.randrange(len(self._fleet.sinks))).stop()
        return None
