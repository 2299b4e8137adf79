"""Per topic, a target table: which mode, which columns, which events delete.

    TableMapping(topic="shop.orders", table="orders", mode="upsert", model="app.rows:OrderRow")

Columns come from a pydantic model (validated: a record that does not fit is a dead letter) or,
without one, are inferred from the payload (a new field adds a nullable column). The fields of an
outboxkit mixin payload are its `state`; any other payload object is taken as it is.

An incompatible change — a record that does not fit and carries a schema version above the one
the table was built for — is not a bad record but a new contract: the partition stops there,
with its offset not advanced, until the mapping is updated.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ImportString, ValidationError, field_validator

from sink import columns
from sink.columns import Kind
from sink.records import DeadLetter, Decoded, Source

Mode = Literal["upsert", "append", "history"]
# A partition key: a column, or a time part of a timestamp column (what DuckLake partitions by).
PARTITION_KEY = r"^(?:(?:year|month|day|hour)\([A-Za-z_][A-Za-z0-9_]*\)|[A-Za-z_][A-Za-z0-9_]*)$"


class TableMapping(BaseModel):
    """How one topic lands in one table."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt key must not pass silently

    topic: str
    table: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    mode: Mode = "upsert"
    model: ImportString[type[BaseModel]] | None = Field(
        None, description="'package.module:Class' of a pydantic model; None infers columns"
    )
    event_types: tuple[str, ...] | None = Field(
        None, description="event types (glob patterns) this table takes; others are dead letters"
    )
    delete_types: tuple[str, ...] = Field(
        ("*Deleted",), description="event types (globs) that delete the key"
    )
    deletes: Literal["hard", "soft"] = "hard"
    schema_version: int = Field(1, ge=1, description="producer schema version the model was written for")
    partition_by: tuple[Annotated[str, Field(pattern=PARTITION_KEY)], ...] = Field(
        (),
        description="lakehouse partitioning: columns, or year/month/day/hour(column) of a timestamp one, "
        "e.g. ['day(_event_time)'] (set when the sink creates the table)",
    )

    @field_validator("model")
    @classmethod
    def _model_columns(cls, model: type[BaseModel] | None) -> type[BaseModel] | None:
        if model is not None:
            columns.model_columns(model)  # names a field that cannot be a column, at start-up
        return model

    def is_delete(self, event_type: str) -> bool:
        return _verdict(self.delete_types, self.event_types, event_type)[1]

    def accepts(self, event_type: str) -> bool:
        return _verdict(self.delete_types, self.event_types, event_type)[0]


@functools.lru_cache(maxsize=4096)
def _verdict(deletes: tuple[str, ...], takes: tuple[str, ...] | None, event_type: str) -> tuple[bool, bool]:
    """(taken, deletes) for an event type, matched once per type: it runs for every event."""
    deleting = any(fnmatchcase(event_type, pattern) for pattern in deletes)
    taken = takes is None or deleting or any(fnmatchcase(event_type, pattern) for pattern in takes)
    return taken, deleting


@dataclass
class TableSchema:
    """A target table's payload columns and the highest producer schema version applied to it."""

    columns: dict[str, Kind] = field(default_factory=dict)
    schema_version: int = 0

    def copy(self) -> TableSchema:
        return TableSchema(dict(self.columns), self.schema_version)


@dataclass(slots=True)  # built per event: a frozen one costs ~5x to make; never mutated
class Row:
    """One event ready for a table: its identity, order and column values."""

    source: Source
    key: str
    event_id: str
    event_type: str
    version: int | None
    schema_version: int
    delete: bool
    tombstone: bool
    values: dict[str, Any]
    created_at: datetime.datetime | None = None  # when the event was written; None: not on the wire


def to_row(mapping: TableMapping, schema: TableSchema, record: Decoded) -> Row | DeadLetter:
    """Map `record` onto the table, widening `schema` with new optional fields as it goes."""
    envelope = record.envelope
    if envelope is None:
        return _row(record, "tombstone", 0, {}, delete=True)
    reject = _Rejecter(record, envelope.schema_version, schema)
    if not mapping.accepts(envelope.event_type):
        return reject(f"event type {envelope.event_type!r} is not one this table takes", stop=False)
    fields = _fields(record.payload)
    if mapping.model is not None:
        try:
            fields = mapping.model.model_validate(fields).model_dump(mode="json")
        except ValidationError as exc:
            return reject(f"does not fit model {mapping.model.__name__}: {_first_error(exc)}")
    else:
        problem = _widen(schema, fields)
        if problem is not None:
            return reject(problem)
    schema.schema_version = max(schema.schema_version, envelope.schema_version)
    delete = mapping.is_delete(envelope.event_type)
    return _row(record, envelope.event_type, envelope.schema_version, fields, delete=delete)


class _Rejecter:
    """Dead letter or stop: a misfit from a newer schema version than the table knows stops."""

    def __init__(self, record: Decoded, schema_version: int, schema: TableSchema) -> None:
        self._record, self._schema_version, self._schema = record, schema_version, schema

    def __call__(self, reason: str, *, stop: bool | None = None) -> DeadLetter:
        record = self._record
        if stop is None:
            stop = self._schema_version > max(self._schema.schema_version, 1)
        if stop:
            reason = (
                f"incompatible schema change: schema version {self._schema_version} {reason}; the table "
                f"was built for version {max(self._schema.schema_version, 1)}. Give the mapping a model "
                f"that fits, or raise its schema_version to {self._schema_version} (records that still "
                "do not fit then become dead letters), then restart the sink"
            )
        return DeadLetter(record.source, record.raw, reason, record.event_id, stop=stop)


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    """An outboxkit mixin payload's `state`, else the payload itself."""
    state = payload.get("state")
    if isinstance(state, dict) and set(payload) <= {"state", "changed"}:
        return state
    return payload


def _widen(schema: TableSchema, fields: dict[str, Any]) -> str | None:
    """Check `fields` against the inferred columns, adding new ones and widening an integer column
    that meets an integer beyond 64 bits; a reason if they do not fit (and then nothing changes)."""
    known = schema.columns
    changes: dict[str, Kind] = {}
    for name, value in fields.items():
        kind = known.get(name)
        if kind is None:
            problem = (
                columns.name_problem(name)
                or columns.case_twin(known, name)
                or columns.case_twin(changes, name, "field")
            )
            if problem is not None:
                return problem
            if value is not None:
                changes[name] = columns.kind_of(value) or Kind.TEXT
        elif not columns.fits(value, kind):
            wider = columns.widened(value, kind)
            if wider is None:
                return columns.misfit(name, value, kind)
            changes[name] = wider
    known.update(changes)
    return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "payload"
    extra = f" and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']}{extra}"


def _row(
    record: Decoded, event_type: str, schema_version: int, fields: dict[str, Any], *, delete: bool
) -> Row:
    envelope = record.envelope
    return Row(
        source=record.source,
        key=record.key,
        event_id=record.event_id,
        event_type=event_type,
        version=None if envelope is None else envelope.aggregate_version,
        schema_version=schema_version,
        delete=delete,
        tombstone=envelope is None,
        values=fields,
        created_at=None if envelope is None else envelope.created_at,
    )
