"""The thread that wakes the relay: one NOTIFY on a psycopg 3 connection of its own.

Its own module because psycopg is optional for the app library (the `postgres` extra): only a
PostgreSQL app that wants the relay woken imports it (`outbox.wakeup`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

import psycopg
from sqlalchemy import Engine

log = logging.getLogger("outboxkit.outbox")
_PACE: Final = 0.02  # seconds between two notifications from one process


class Notifier:
    """One daemon thread per engine: waits for a poke, sends one NOTIFY, repeats.

    It talks to the server with a plain psycopg connection of its own, whatever driver the engine
    uses (an async engine's connections cannot be used from a thread).
    """

    def __init__(self, engine: Engine, channel: str) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._channel = channel
        self._conn: psycopg.Connection[object] | None = None
        self._poked = threading.Event()
        threading.Thread(target=self._run, name="outboxkit-notify", daemon=True).start()

    def poke(self) -> None:
        self._poked.set()

    def _run(self) -> None:
        while True:
            self._poked.wait()
            self._poked.clear()  # commits from here on get a NOTIFY of their own
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self._conninfo, autocommit=True)
                self._conn.execute("select pg_notify(%s, '')", (self._channel,))
            except psycopg.Error as exc:
                log.debug("could not wake the relay (%s); it will find the events by polling", exc)
                self._conn = None
            time.sleep(_PACE)
