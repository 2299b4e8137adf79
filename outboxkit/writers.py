"""Writer threads at a steady pace: what the demo's shop and the chaos workload have in common."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from sqlalchemy.exc import SQLAlchemyError

FAILED = "failed"  # what a transaction the database refused counts as


class Writers:
    """`writers` threads that together offer about `rate` events per second until stopped.

    Subclasses write one transaction in `one()` and say what it was and how many events it
    offered; a transaction the database refuses (a conflict, or the database away) counts as
    `FAILED` and its thread backs off briefly.
    """

    def __init__(self, *, writers: int, rate: float, seed: int) -> None:
        self._writers, self._rate, self._seed = writers, rate, seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._done = [Counter[str]() for _ in range(writers)]  # one per thread: no lock needed

    @property
    def done(self) -> Counter[str]:
        """Transactions by kind, `FAILED` included."""
        return sum(self._done, Counter())

    def start(self) -> None:
        for n in range(self._writers):
            thread = threading.Thread(
                target=self._write, args=(random.Random(self._seed + n), self._done[n]), daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def one(self, rng: random.Random) -> tuple[str, int]:
        """Write one transaction; return its kind and the events it offered (committed or not)."""
        raise NotImplementedError

    def _write(self, rng: random.Random, done: Counter[str]) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                kind, events = self.one(rng)
            except SQLAlchemyError:
                kind, events = FAILED, 1
                self._stop.wait(0.5)
            done[kind] += 1
            # Paced by events, not transactions: `rate` is what the relay and the sink will see.
            self._stop.wait(max(0.0, events * self._writers / self._rate - (time.monotonic() - started)))
