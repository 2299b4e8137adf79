"""Sending the outbox statement with the COMMIT, in one round trip (PostgreSQL through psycopg 3).

Why: an app transaction that writes one order costs three round trips (BEGIN with the insert,
the insert's RETURNING, COMMIT); the outbox statement made it four, and a round trip on loopback
is worth about a tenth of the whole transaction (`bench/`, B1). Its result is never needed by
the app: versions are computed in SQL, event ids in Python. So a flush *defers* the statement
(`OutboxSettings.write_at="commit"`), and the commit sends it and COMMIT together in libpq's
pipeline mode, prepared once per connection: one round trip for both, then one result each.

What is kept, and how:

- **Nothing runs before it.** Any other statement on the connection (the app's, a SAVEPOINT, a
  RELEASE, a two-phase PREPARE) first executes what is deferred, as a flush would have. So the
  outbox rows keep their place among the transaction's writes, a rolled-back savepoint takes its
  rows with it, and every later query of the transaction sees them.
- **Nothing outlives its transaction.** What is deferred belongs to one SQLAlchemy `Connection`
  and is dropped when its transaction begins or rolls back; never written into another one.
- **A failure fails the commit**, with the server's error (a deadlock, a statement timeout) as
  SQLAlchemy raises any: the transaction is aborted, nothing of it commits.
- **Never under autocommit**, where each statement commits at once and nothing could wait.

Not deferred (written at once, as with `write_at="flush"`): other drivers (psycopg2, asyncpg),
psycopg's async connections (the wait below would block their event loop), a flush of several
aggregates (its array statement is the rare case), and a libpq without pipeline mode (< 14).
With PgBouncer in transaction mode, set psycopg's `prepare_threshold=None` as psycopg itself
requires: the statement is then sent unprepared (still in the one round trip).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final, TypeGuard

from sqlalchemy import Connection, Engine, Pool, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

if TYPE_CHECKING:
    import psycopg

_PREPARED: Final = "outboxkit.prepared"  # in a DBAPI connection's `info`: the names prepared on it
_pending: weakref.WeakKeyDictionary[Connection, list[Deferred]] = weakref.WeakKeyDictionary()
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")  # a `text()` bind, as SQLAlchemy finds them


@dataclass(frozen=True, slots=True)
class Statement:
    """A fixed outbox statement in libpq's form: `$n` parameters in the order of `names`."""

    name: bytes  # its prepared name on a connection
    sql: bytes
    names: tuple[str, ...]


@cache
def statement(name: str, sql: str) -> Statement:
    """`sql`, written with `:name` binds as for `text()`, as a statement to prepare as `name`."""
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return Statement(f"outboxkit_{name}".encode(), _BIND.sub(positional, sql).encode(), tuple(names))


@dataclass(frozen=True, slots=True)
class Deferred:
    statement: Statement
    values: tuple[bytes | None, ...]


def defer(conn: Connection, stmt: Statement, params: dict[str, Any]) -> bool:
    """Keep `stmt` to send with `conn`'s COMMIT; False (nothing kept) where that cannot be done:
    the caller then executes it at once."""
    raw = conn.connection.driver_connection
    if not _psycopg_sync(raw) or raw.autocommit or not _pipelines():
        return False
    _listen_once()
    values = tuple([None if (v := params[n]) is None else str(v).encode() for n in stmt.names])
    _pending.setdefault(conn, []).append(Deferred(stmt, values))
    return True


def _psycopg_sync(raw: object) -> TypeGuard[psycopg.Connection[Any]]:
    """`raw` is a sync psycopg 3 connection: asked of its type, as `import outbox` loads no psycopg."""
    return type(raw).__module__ == "psycopg" and type(raw).__name__ == "Connection"


@cache
def _pipelines() -> bool:
    """libpq can pipeline, and close a prepared statement that may not exist (17+)."""
    from psycopg import capabilities  # noqa: PLC0415 - a psycopg connection is in use: it is there

    return capabilities.has_pipeline() and capabilities.has_send_close_prepared()


@cache
def _listen_once() -> None:
    # On the class: every engine, and connections opened before the first deferred write too (each
    # event point checks the engine's listeners when it is reached).
    event.listen(Engine, "before_cursor_execute", _before_execute)
    event.listen(Engine, "prepare_twophase", _write_now)
    event.listen(Engine, "commit", _commit)
    event.listen(Engine, "rollback", _rolled_back)
    for name in ("begin", "begin_twophase", "rollback_twophase"):
        event.listen(Engine, name, _drop)
    event.listen(Pool, "reset", _reset)


def _drop(conn: Connection, *args: object) -> None:
    _pending.pop(conn, None)


def _rolled_back(conn: Connection) -> None:
    _drop(conn)
    _forget_prepared(conn)  # psycopg deallocates every prepared statement when it rolls back


def _write_now(conn: Connection, *args: object) -> None:
    """Send what is deferred on its own, before anything else runs on `conn`."""
    if deferred := _pending.pop(conn, None):
        _send(conn, deferred, commit=False)


def _before_execute(conn: Connection, cursor: object, statement: str, *args: object) -> None:
    if conn in _pending:
        _write_now(conn)
    if not statement.lstrip()[:9].upper().startswith(_KEEPS_PREPARED):
        _forget_prepared(conn)


# Statements after which our prepared statements surely still exist. After any other (DDL, DISCARD,
# a ROLLBACK TO SAVEPOINT) psycopg may send DEALLOCATE ALL, or the statement is one itself: the next
# deferred write closes and prepares its statement again, in the same round trip.
_KEEPS_PREPARED = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "SAVEPOINT", "RELEASE", "VALUES", "SHOW")


def _forget_prepared(conn: Connection) -> None:
    conn.connection.info.pop(_PREPARED, None)


def _reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
    """The pool rolls back what a returned connection left open, and psycopg deallocates."""
    raw = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if _psycopg_sync(raw) and raw.info.transaction_status.name != "IDLE":
        record.info.pop(_PREPARED, None)


def _commit(conn: Connection) -> None:
    """Send what is deferred and COMMIT in one round trip. psycopg's own commit, which SQLAlchemy
    calls next, then finds the transaction ended and sends nothing."""
    if deferred := _pending.pop(conn, None):
        _send(conn, deferred, commit=True)


def _send(conn: Connection, deferred: list[Deferred], *, commit: bool) -> None:
    from outbox import pipeline  # noqa: PLC0415 - psycopg's, loaded once a psycopg connection writes

    raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    prepared: set[bytes] = conn.connection.info.setdefault(_PREPARED, set())
    commands = [pipeline.Command(d.statement.name, d.statement.sql, d.values) for d in deferred]
    try:
        pipeline.send(raw, commands, prepared if raw.prepare_threshold is not None else None, commit=commit)
    except pipeline.PipelineError as failure:
        if commit:  # as a failed COMMIT does: the transaction ends, rolled back (SQLAlchemy takes it as over)
            raw.rollback()
            _forget_prepared(conn)
        raise DBAPIError.instance(
            deferred[0].statement.sql.decode(), None, failure.error, type(failure.error)
        ) from None
