"""The one place that gathers what the checks compare: Kafka, the app database, the warehouse.

The databases are read with plain SQL over the table and column names of outboxkit's outbox and
sink — the contract, not their code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Connection, TextClause, bindparam, make_url, text

from runtime import urls
from verify import checks
from verify.checks import Aggregate, Findings
from verify.kafka import committed
from verify.settings import VerifySettings


def verify(settings: VerifySettings) -> Findings:
    seen = committed(settings.kafka, settings.topics)
    findings = Findings()
    versions, parked, source = None, None, None
    if settings.app_database_url is not None:
        with _connected(settings.app_database_url) as conn:
            kinds = settings.aggregate_types
            published = {(record.aggregate, record.version) for record in seen}
            versions, parked = _committed_versions(conn, kinds), _parked(conn, kinds, published, findings)
            if settings.source_table:
                source = _rows(conn, settings.source_table, settings.source_columns, "")
    checks.check_kafka(findings, seen, versions, parked, settings.aggregate_types)
    if settings.warehouse_url is not None:
        with _connected(settings.warehouse_url) as conn:
            if settings.log_table:
                ids = conn.execute(
                    text(f"SELECT _event_id FROM {_quoted(conn, settings.log_table)}")
                ).scalars()
                checks.check_log(findings, seen, ids)
            if settings.state_table:
                checks.check_state(findings, seen, _state(conn, settings.state_table), settings.delete_types)
                if source is not None:
                    live = _rows(conn, settings.state_table, ["_key", *settings.source_columns[1:]], LIVE)
                    checks.check_source(findings, settings.source_table or "", source, live)
    return findings


@contextmanager
def _connected(url: SecretStr) -> Iterator[Connection]:
    parsed = make_url(url.get_secret_value())
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = urls.engine(parsed)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _committed_versions(conn: Connection, kinds: list[str] | None) -> dict[Aggregate, int]:
    query = "SELECT aggregatetype, aggregateid, version FROM outbox_versions"
    rows = conn.execute(*_of_kinds(query, kinds))
    return {(kind, key): int(version) for kind, key, version in rows}


def _parked(
    conn: Connection,
    kinds: list[str] | None,
    published: set[tuple[Aggregate | None, int | None]],
    findings: Findings,
) -> dict[Aggregate, set[int]]:
    """Versions committed but not (yet) in Kafka by design: still in the outbox, or a dead letter.

    Pending are the outbox's rows not in Kafka yet; published rows wait there for the relay's
    cleanup, and are not pending.
    """
    parked: dict[Aggregate, set[int]] = defaultdict(set)
    for table in ("outbox", "outbox_dead_letters"):
        query = f"SELECT aggregatetype, aggregateid, aggregateversion FROM {table}"
        for kind, key, version in conn.execute(*_of_kinds(query, kinds)):
            parked[(kind, key)].add(int(version))
            if table == "outbox_dead_letters":
                findings.dead_letters += 1
            elif ((kind, key), int(version)) not in published:
                findings.pending += 1
    return parked


def _of_kinds(query: str, kinds: list[str] | None) -> tuple[TextClause, dict[str, Any]]:
    """`query` limited to the aggregate types `kinds` (all when None)."""
    if kinds is None:
        return text(query), {}
    return text(f"{query} WHERE aggregatetype IN :kinds").bindparams(bindparam("kinds", expanding=True)), {
        "kinds": kinds
    }


LIVE = " WHERE NOT coalesce(_deleted, FALSE)"


def _rows(conn: Connection, table: str, columns: list[str], where: str) -> dict[str, tuple[Any, ...]]:
    """Rows by their first column (as text, like Kafka keys), the others as a tuple."""
    query = f"SELECT {', '.join(_quoted(conn, column) for column in columns)} FROM {_quoted(conn, table)}"
    return {str(row[0]): tuple(row[1:]) for row in _soft_deletes_or_not(conn, query + where, query)}


def _state(conn: Connection, table: str) -> dict[str, tuple[int | None, bool]]:
    name = _quoted(conn, table)
    rows = _soft_deletes_or_not(
        conn, f"SELECT _key, _version, _deleted FROM {name}", f"SELECT _key, _version, FALSE FROM {name}"
    )
    return {key: (version, bool(deleted)) for key, version, deleted in rows}


def _soft_deletes_or_not(conn: Connection, query: str, without: str) -> list[tuple[Any, ...]]:
    """`query`, or `without` where the table has no `_deleted` column (a table without soft deletes)."""
    try:
        return [tuple(row) for row in conn.execute(text(query))]
    except Exception:  # noqa: BLE001 - which error a missing column raises differs per database
        conn.rollback()
        return [tuple(row) for row in conn.execute(text(without))]


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)
