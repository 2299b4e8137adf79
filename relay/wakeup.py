"""Waiting for work: until the app's NOTIFY arrives, or the poll interval has passed.

`outbox.wakeup` sends one `NOTIFY` on its channel after commits that wrote events; the relay
listens on a connection of its own and fetches as soon as one arrives. Notifications are only a
hint: one that is lost (or a driver without LISTEN support, or SQLite) leaves plain polling, so
correctness never depends on them.

A WAL capture needs no hint: the server streams each commit to its replication socket, so a
relay whose shards all read the log waits on those sockets instead (`wait_readable`), for at
most the poll interval too (`CaptureSource.wakeup_fd`).
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Sequence

import psycopg
from sqlalchemy import Engine

from relay import names
from runtime import urls

log = logging.getLogger(names.LOGGER)


class Listener:
    """LISTENs on `channel`; `wait()` returns at the first notification or after `timeout`."""

    def __init__(self, engine: Engine, channel: str) -> None:
        self._engine = engine
        self._channel = channel
        self._conn: psycopg.Connection[object] | None = None

    def wait(self, timeout: float) -> None:
        try:
            conn = self._connection()
        except (psycopg.Error, ValueError) as exc:
            log.debug("cannot listen for notifications (%s); polling", exc)
            time.sleep(timeout)
            return
        try:
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            log.debug("lost the notification connection (%s); polling", exc)
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[object]:
        if self._conn is None:
            url = self._engine.url.set(drivername="postgresql")
            conn: psycopg.Connection[object] = psycopg.connect(
                url.render_as_string(hide_password=False),
                autocommit=True,
                connect_timeout=urls.connect_timeout(url),
            )
            conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel)))
            self._conn = conn
        return self._conn


def wait_readable(fds: Sequence[int], seconds: float) -> bool:
    """Wait up to `seconds` for one of `fds` to turn readable (or hung up); whether one did. With
    poll(2), not select(2), which refuses descriptors above 1023 (a process with many open files:
    seen in the suite)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(seconds * 1000))
