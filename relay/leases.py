"""Leases: which shards of an outbox this relay process publishes, when several run side by side.

Every app pod runs a relay sidecar against the same outbox. Each shard must have exactly one
active publisher, and a standby must take over within seconds when the holder dies. On
PostgreSQL a lease is a session-level advisory lock, `pg_try_advisory_lock(<source>, <shard>)`,
held on a connection of its own:

* the database enforces exclusivity — no clocks, no lease table, no renewal writes;
* a holder that dies loses its locks as soon as the server notices its connection is gone (at
  once for a killed process; within the TCP keepalive settings for a vanished host);
* a holder that hangs (paused) stops its lease heartbeat, and the server ends the idle lease
  session after the lease timeout (`idle_session_timeout`), freeing its shards;
* a holder that finds its lease connection gone stops publishing at once (`LeaseLostError`): it
  can no longer know who holds its shards. It carries on as a standby — when the database is
  back it takes free shards again, and its new producer fences whatever published meanwhile.

Leases are the first line of defence. The second is Kafka's: each shard's producer has a stable
`transactional.id`, so a new holder's `init_transactions()` fences a predecessor that still
thinks it holds the shard (e.g. paused past its lease), and the predecessor's commit fails.

SQLite allows one relay only (the database is a local file), so its lease is always held.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from relay import names
from relay.errors import CaptureError, LeaseLostError
from relay.shards import ONLY, Shard
from wire import murmur2

log = logging.getLogger(names.LOGGER)


class Leases(Protocol):
    def refresh(self) -> frozenset[Shard]:
        """Try to take free shards, check the ones held; return the shards held now.

        Raises LeaseLostError once held leases are lost, CaptureError while holding none because
        the database does not answer (so a starting relay can tell waiting from standing by)."""
        ...

    def close(self) -> None:
        """Give every lease back."""
        ...

    @property
    def unheld(self) -> int:
        """Shards of the source no live relay holds, as last seen: their events wait."""
        ...


class SoleLease:
    """The one shard of a database only one relay can use (SQLite)."""

    def __init__(self) -> None:
        self._held = frozenset({ONLY})

    def refresh(self) -> frozenset[Shard]:
        return self._held

    def close(self) -> None:
        """Nothing to give back."""

    @property
    def unheld(self) -> int:
        return 0


class AdvisoryLeases:
    """Shard leases as PostgreSQL session advisory locks, on one dedicated connection.

    A heartbeat thread keeps them: it pings the connection and tries to take free shards every
    `interval` seconds, whatever the publishing loop is doing — a relay waiting out a Kafka outage
    keeps its shards. A paused process pauses its heartbeat too, and loses them after `timeout`.
    """

    def __init__(
        self,
        engine: Engine,
        source_id: str,
        shards: int,
        *,
        max_held: int | None = None,
        interval: float = 1.0,
        timeout: float = 15.0,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._timeout_ms = int(timeout * 1000)
        self._source_id = source_id
        self._source_key = lock_key(source_id)
        self._shards = [Shard(index, shards) for index in range(shards)]
        self._max_held = max_held or shards
        self._conn: Connection | None = None
        self._guard = threading.Lock()
        self._held: frozenset[Shard] = frozenset()
        self._lost: LeaseLostError | None = None
        self._unreachable: SQLAlchemyError | None = None  # the last beat's failure, holding nothing
        self._unheld = 0
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def refresh(self) -> frozenset[Shard]:
        if self._heartbeat is None:
            self._beat()  # the first round at once, so a relay starts publishing without waiting
            self._heartbeat = threading.Thread(target=self._keep, name="outboxkit-leases", daemon=True)
            self._heartbeat.start()
        with self._guard:
            lost, self._lost = self._lost, None
            if lost is not None:
                raise lost
            if self._unreachable is not None:
                raise CaptureError("cannot reach the database for leases") from self._unreachable
            return self._held

    @property
    def unheld(self) -> int:
        return self._unheld

    def close(self) -> None:
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._conn is not None:
            try:
                self._conn.execute(text("select pg_advisory_unlock_all()"))
            except SQLAlchemyError as exc:
                log.warning("could not give leases back (%s); the server frees them with the connection", exc)
        self._drop_connection()

    def _keep(self) -> None:
        while not self._stopping.wait(self._interval):
            self._beat()

    def _beat(self) -> None:
        try:
            conn = self._connection()
            conn.execute(text("select 1"))  # the locks live exactly as long as this connection
            taken = self._take_free(conn)
            with self._guard:  # all of the round's shards at once: the service starts them together
                self._held |= taken
            self._unheld = self._count_unheld(conn)
        except SQLAlchemyError as exc:
            with self._guard:
                if self._held:
                    self._lost = LeaseLostError(
                        f"lost the connection holding the leases of {_names(self._held)} ({exc}); "
                        "stopped publishing them"
                    )
                else:
                    # Once, not every heartbeat: the relay keeps trying while it stands by.
                    first, self._unreachable = self._unreachable is None, exc
                    log.log(
                        logging.WARNING if first else logging.DEBUG,
                        "cannot reach the database for leases (%s); retrying every %.1fs",
                        exc,
                        self._interval,
                    )
            self._drop_connection()
        else:
            with self._guard:
                back, self._unreachable = self._unreachable is not None, None
            if back:
                log.warning("the database answers again: lease heartbeat resumed")

    def _take_free(self, conn: Connection) -> frozenset[Shard]:
        """Every free shard this relay may still hold, in one round."""
        taken: set[Shard] = set()
        for shard in self._shards:
            if len(self._held) + len(taken) >= self._max_held:
                break
            if shard not in self._held and self._try_lock(conn, shard):
                log.info("took the lease of %s", shard)
                taken.add(shard)
        return frozenset(taken)

    def _count_unheld(self, conn: Connection) -> int:
        """A relay below `max_held` just tried every shard it does not hold, so each is held by
        another; one at its limit asks the lock table who holds the rest (one query a beat)."""
        if len(self._held) < self._max_held:
            return 0
        return len(self._shards) - len(holders(conn, self._source_id))

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # The server ends this session, and so the leases, if the heartbeat stops.
            conn.execute(text(f"set idle_session_timeout = {self._timeout_ms}"))
            # How `outboxkit relay status` (and pg_stat_activity) tell which relay holds a shard.
            conn.execute(
                text("select set_config('application_name', :name, false)"),
                {"name": f"outboxkit-relay {socket.gethostname()}:{os.getpid()}"},
            )
            self._conn = conn
        return self._conn

    def _try_lock(self, conn: Connection, shard: Shard) -> bool:
        query = text("select pg_try_advisory_lock(:source, :shard)")
        return bool(conn.execute(query, {"source": self._source_key, "shard": shard.index}).scalar_one())

    def _drop_connection(self) -> None:
        with self._guard:
            self._held = frozenset()
        if self._conn is not None:
            try:
                self._conn.invalidate()  # never back to the pool: its locks must die with it
            except SQLAlchemyError:
                log.debug("lease connection already gone")
            self._conn = None


def lock_key(source_id: str) -> int:
    """The first key of a source's advisory locks (the second is the shard): a signed int4."""
    return murmur2(f"outboxkit-relay:{source_id}".encode())


def holders(conn: Connection, source_id: str) -> dict[int, str]:
    """Shard index -> who holds its lease (the relay's `host:pid`), from the server's lock table."""
    rows = conn.execute(
        text(
            "select l.objid, a.pid, a.application_name "
            "from pg_locks l join pg_stat_activity a using (pid) "
            "where l.locktype = 'advisory' and l.granted and l.objsubid = 2 and l.classid = :key"
        ),
        {"key": lock_key(source_id) & 0xFFFFFFFF},  # the lock table shows the key as an unsigned oid
    )
    return {int(row.objid): row.application_name or f"server backend {row.pid}" for row in rows}


def _names(shards: frozenset[Shard]) -> str:
    return ", ".join(str(shard) for shard in sorted(shards))
