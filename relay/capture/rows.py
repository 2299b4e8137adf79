"""What both capture sources share: the outbox columns on the wire, reads and deletes with the
database's errors translated to `CaptureError`, and the one mapping from an outbox row to an
envelope. No dialect SQL here: that lives in each source's module."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Engine, Row, Select, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from outbox.table import outbox_table
from relay.capture.source import Backlog, CapturedRow, CaptureMode, Position
from relay.errors import CaptureError, ConfigError
from wire import Envelope
from wire.headers import not_text

OUTBOX = outbox_table.c
# The columns that go on the wire, `created_at` among them (history validity); no more is fetched.
WIRE = [
    OUTBOX[name]
    for name in (
        "id", "event_id", "topic", "key", "payload", "type", "aggregatetype", "aggregateid",
        "aggregateversion", "schema_version", "headers", "created_at",
    )
]  # fmt: skip
START_OVER = (
    "Nothing was skipped or deleted. To publish them, run the relay under a new "
    "OUTBOXKIT_RELAY_SOURCE_ID: it starts from the beginning of this outbox, and the sink skips the "
    "events it has applied already"
)


def expect_dialect(engine: Engine, dialect: str, why: str) -> None:
    if engine.dialect.name != dialect:
        raise ConfigError(
            f"this capture source reads {dialect} only ({why}), not {engine.dialect.name}; "
            "outboxkit captures from SQLite and PostgreSQL"
        )


def expect_mode(position: Position, mode: CaptureMode) -> None:
    """Refuse a checkpoint the other PostgreSQL capture wrote: positions do not carry over (a
    snapshot says nothing of LSNs, nor an LSN of snapshots), and reading one as the other would
    publish the outbox again or skip part of it."""
    written: CaptureMode | None = "wal" if position.lsn is not None else None
    if position.target is not None:
        written = "poll"
    if written not in (None, mode):
        raise ConfigError(
            f"this source's checkpoint ({position}) was written by {written} capture, the relay is set to "
            f"OUTBOXKIT_RELAY_CAPTURE={mode}: positions do not carry over. Set it back to {written}, or "
            "switch under a new OUTBOXKIT_RELAY_SOURCE_ID once the old relays drained the outbox"
        )


def read(engine: Engine, query: Select[Any]) -> Sequence[Row[Any]]:
    try:
        with engine.connect() as conn:
            return conn.execute(query).all()
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot read the outbox table: {exc}") from exc


def delete_oldest(
    engine: Engine, published: list[ColumnElement[bool]], limit: int, created_before: datetime | None
) -> int:
    """One bounded DELETE: short, and on published rows only, so writers never wait for it."""
    if created_before is not None:
        published = [*published, OUTBOX.created_at < created_before]
    oldest = select(OUTBOX.id).where(*published).order_by(OUTBOX.id).limit(limit)
    try:
        with engine.begin() as conn:
            return conn.execute(delete(outbox_table).where(OUTBOX.id.in_(oldest.scalar_subquery()))).rowcount
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot delete published outbox rows: {exc}") from exc


def backlog(engine: Engine, unpublished: list[ColumnElement[bool]]) -> Backlog:
    query = select(func.count(), func.min(OUTBOX.created_at)).where(*unpublished)
    try:
        with engine.connect() as conn:
            rows, oldest = conn.execute(query).one()
    except SQLAlchemyError as exc:
        raise CaptureError(f"cannot read the outbox table: {exc}") from exc
    return Backlog(int(rows), None if oldest is None else _utc(oldest))


class Polling:
    """What the polling sources (`relay.capture.postgres`, `relay.capture.sqlite`) do alike: they
    re-read the table each fetch, so nothing is kept for the relay and nothing waits for them."""

    def published(self, position: Position) -> None:
        """Nothing to let go of: polling keeps nothing in the database for the relay."""

    def dead_lettered(self, row_id: int) -> None:
        """Nothing to forget: the next read of the table no longer finds the row."""

    def close(self) -> None:
        """Nothing held open: each read takes a pooled connection."""

    def wakeup_fd(self) -> int | None:
        """None: nothing tells a polling source of a commit but the app's NOTIFY."""
        return None


class OutboxRow(Protocol):
    """An outbox row's wire columns as another source than a query builds it (WAL capture)."""

    @property
    def id(self) -> int: ...
    @property
    def event_id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def payload(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def aggregatetype(self) -> str: ...
    @property
    def aggregateid(self) -> str: ...
    @property
    def aggregateversion(self) -> int: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def headers(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...


def captured(rows: Sequence[Row[Any]]) -> list[CapturedRow]:
    return [captured_row(row) for row in rows]


def captured_row(row: Row[Any] | OutboxRow) -> CapturedRow:
    """`row` to publish; or, if it cannot be (see `CapturedRow.refused`), to make a dead letter of."""
    try:
        return CapturedRow(id=row.id, envelope=envelope_of(row))
    except MalformedHeadersError as exc:
        return CapturedRow(id=row.id, envelope=envelope_of(row, headers=False), refused=str(exc))


class MalformedHeadersError(ValueError):
    """An outbox row's headers are not a JSON object of strings (outboxkit never writes such)."""


def envelope_of(row: Row[Any] | OutboxRow, *, headers: bool = True) -> Envelope:
    """An outbox row as the envelope to produce: the one mapping from table to wire. Raises
    `MalformedHeadersError` for headers it cannot carry (`headers=False`: leaves them out)."""
    extra: tuple[tuple[str, bytes], ...] = ()  # most rows have none: nothing to parse then (per event)
    if headers and row.headers not in (None, "", "{}"):
        extra = _extra_headers(row.headers)
    return Envelope(
        event_id=row.event_id,
        topic=row.topic,
        key=None if row.key is None else row.key.encode(),
        payload=row.payload.encode(),
        event_type=row.type,
        aggregate_type=row.aggregatetype,
        aggregate_id=row.aggregateid,
        aggregate_version=row.aggregateversion,
        schema_version=row.schema_version,
        extra_headers=extra,
        created_at=_utc(row.created_at),
    )


def columns_of(row: CapturedRow) -> dict[str, object]:
    """The outbox columns `envelope_of` read `row` from, back from its envelope: what a dead letter
    keeps of an event that has no row to move (a logical message)."""
    envelope = row.envelope
    return {
        "id": row.id,
        "event_id": envelope.event_id,
        "aggregatetype": envelope.aggregate_type,
        "aggregateid": envelope.aggregate_id,
        "aggregateversion": envelope.aggregate_version,
        "type": envelope.event_type,
        "topic": envelope.topic,
        "key": None if envelope.key is None else envelope.key.decode(),
        "payload": envelope.payload.decode(),
        "headers": json.dumps({name: value.decode() for name, value in envelope.extra_headers}),
        "schema_version": envelope.schema_version,
        "created_at": envelope.created_at,
    }


def _extra_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise MalformedHeadersError(_malformed(text, f"not JSON: {exc}")) from exc
    if not isinstance(parsed, dict):
        raise MalformedHeadersError(_malformed(text, f"a JSON {type(parsed).__name__}, not an object"))
    if wrong := not_text(parsed):
        raise MalformedHeadersError(_malformed(text, f"not strings: the value(s) of {', '.join(wrong)}"))
    return tuple((name, value.encode()) for name, value in parsed.items())


def _malformed(text: str, why: str) -> str:
    shown = text if len(text) <= 200 else f"{text[:200]}..."
    return (
        f"its headers are {why} ({shown!r}); Kafka headers come from a JSON object of strings, as "
        "outboxkit writes them: fix the headers of the dead letter and publish it again"
    )


def _utc(at: datetime) -> datetime:
    """SQLite hands back its UTC times without an offset; PostgreSQL with one."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
