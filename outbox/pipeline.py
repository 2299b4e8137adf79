"""libpq's pipeline mode for `outbox.deferred`: deferred outbox statements and the COMMIT sent as
one batch, read back as one (a single round trip), on a psycopg 3 connection's own `pgconn`.

Kept apart so that `import outbox` loads no psycopg: only an app writing through psycopg does.
"""

from __future__ import annotations

import select
from typing import Any, NamedTuple

import psycopg
from psycopg import pq


class Command(NamedTuple):
    """A statement to run by its prepared `name`, prepared from `sql` if need be, with `values`."""

    name: bytes
    sql: bytes
    values: tuple[bytes | None, ...]


class PipelineError(Exception):
    """A command of the batch failed; `error` is psycopg's error for it, as psycopg raises them."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error


def send(
    raw: psycopg.Connection[Any], commands: list[Command], prepared: set[bytes] | None, *, commit: bool
) -> None:
    """Run `commands` and, if `commit`, COMMIT, in one round trip. `prepared` holds the names known
    prepared on this connection and gains those prepared now; None: send every statement
    unprepared (psycopg's `prepare_threshold=None`, as for PgBouncer in transaction mode).
    Raises `PipelineError` for the first error; the server skipped everything after it."""
    try:
        with raw.lock:
            failed = _pipelined(raw.pgconn, commands, prepared, commit=commit)
    except psycopg.Error as exc:  # the connection broke: SQLAlchemy's pool finds it closed
        raw.close()
        raise PipelineError(exc) from exc
    if failed is not None:
        raise PipelineError(psycopg.errors.error_from_result(failed, raw.info.encoding))


def _pipelined(
    pg: pq.abc.PGconn, commands: list[Command], prepared: set[bytes] | None, *, commit: bool
) -> pq.abc.PGresult | None:
    """Send `commands` (prepared by name, unless `prepared` is None) and maybe COMMIT as one
    pipeline; the first error among their results, if any. A prepare counts once its own result
    says so: after an error the server skips the rest of the pipeline, prepares included."""
    pg.enter_pipeline_mode()
    preparing: list[bytes | None] = []  # per command sent: the name it prepares, or None
    for command in commands:
        name = command.name
        if prepared is not None and name not in prepared and name not in preparing:
            pg.send_close_prepared(name)  # not an error if there is none: prepared by us or not
            preparing.append(None)
            pg.send_prepare(name, command.sql)
            preparing.append(name)
        if prepared is None:
            pg.send_query_params(command.sql, command.values)
        else:
            pg.send_query_prepared(name, command.values)
        preparing.append(None)
    if commit:
        pg.send_query_params(b"COMMIT", None)
        preparing.append(None)
    pg.pipeline_sync()
    results = _results(pg)
    pg.exit_pipeline_mode()
    for prepares, result in zip(preparing, results, strict=True):
        if prepares is not None and prepared is not None and result.status == pq.ExecStatus.COMMAND_OK:
            prepared.add(prepares)
    return next((r for r in results if r.status == pq.ExecStatus.FATAL_ERROR), None)


def _results(pg: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """One result per command sent, read up to the pipeline's sync. Waits in poll(2), which
    releases the GIL, for the other threads of the app."""
    _flush(pg)
    results: list[pq.abc.PGresult] = []
    while True:
        if pg.is_busy():
            _wait(pg.socket, select.POLLIN)
            pg.consume_input()
            continue
        result = pg.get_result()
        if result is None:  # the end of one command's results
            continue
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        results.append(result)


def _flush(pg: pq.abc.PGconn) -> None:
    while pg.flush():  # psycopg's connections are non-blocking: a large send may take several
        _wait(pg.socket, select.POLLOUT)


def _wait(fd: int, events: int) -> None:
    poller = select.poll()
    poller.register(fd, events | select.POLLERR | select.POLLHUP)
    poller.poll()
