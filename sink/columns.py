"""Column kinds: what a payload field becomes in the warehouse, and when a value no longer fits.

A small closed set of kinds, because both targets must agree on them and because a kind is what
schema evolution compares: a new field adds a nullable column of its inferred kind; a value whose
kind differs from its column's is drift, never silently coerced (a text `"12.50"` landing in a
numeric column is how warehouses end up with half their rows wrong). The one change of kind is a
widening that loses nothing: an integer column that meets an integer beyond 64 bits becomes
numeric.

Numbers keep every digit Kafka holds: the decoder gives integers beyond 64 bits and numbers a
double cannot hold as `Decimal` (numeric), and a numeric value a warehouse column would round is
refused with the reason (`unheld`).
"""

from __future__ import annotations

import datetime
import decimal
import types
import typing
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel

# Columns outboxkit adds to every target table. A payload field may not take one of these names.
KEY = "_key"
EVENT_ID = "_event_id"
EVENT_TYPE = "_event_type"
VERSION = "_version"
SCHEMA_VERSION = "_schema_version"
TOPIC = "_topic"
PARTITION = "_partition"
OFFSET = "_offset"
EVENT_TIME = "_event_time"
DELETED = "_deleted"
VALID_FROM = "_valid_from"
VALID_TO = "_valid_to"
MAX_NAME = 63  # bytes: PostgreSQL truncates longer identifiers silently; refuse them instead
INT64 = range(-(2**63), 2**63)  # what an integer (BIGINT) column holds


class Kind(StrEnum):
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    TEXT = "text"
    NUMERIC = "numeric"
    TIMESTAMP = "timestamp"
    DATE = "date"
    JSON = "json"  # objects and arrays, stored as their JSON text


SQL_TYPES: Mapping[str, Mapping[Kind, str]] = {
    "postgresql": {
        Kind.INTEGER: "BIGINT",
        Kind.FLOAT: "DOUBLE PRECISION",
        Kind.BOOLEAN: "BOOLEAN",
        Kind.TEXT: "TEXT",
        Kind.NUMERIC: "NUMERIC",
        Kind.TIMESTAMP: "TIMESTAMPTZ",
        Kind.DATE: "DATE",
        Kind.JSON: "TEXT",
    },
    "duckdb": {
        Kind.INTEGER: "BIGINT",
        Kind.FLOAT: "DOUBLE",
        Kind.BOOLEAN: "BOOLEAN",
        Kind.TEXT: "VARCHAR",
        Kind.NUMERIC: "DECIMAL(38, 9)",
        Kind.TIMESTAMP: "TIMESTAMPTZ",
        Kind.DATE: "DATE",
        Kind.JSON: "VARCHAR",
    },
}
# Digits before and after the point a numeric column holds: DuckDB's DECIMAL has at most 38 in all
# (a wider scale would shrink the integer part below 64 bits); PostgreSQL's NUMERIC, its limits.
NUMERIC_DIGITS: Mapping[str, tuple[int, int]] = {"postgresql": (131072, 16383), "duckdb": (29, 9)}


def metadata_columns(mode: str) -> dict[str, Kind]:
    """The outboxkit columns of a table in `mode` (upsert, append or history), key first."""
    columns = {
        KEY: Kind.TEXT,
        EVENT_ID: Kind.TEXT,
        EVENT_TYPE: Kind.TEXT,
        VERSION: Kind.INTEGER,
        SCHEMA_VERSION: Kind.INTEGER,
        TOPIC: Kind.TEXT,
        PARTITION: Kind.INTEGER,
        OFFSET: Kind.INTEGER,
        EVENT_TIME: Kind.TIMESTAMP,
    }
    if mode == "upsert":
        columns[DELETED] = Kind.BOOLEAN
    if mode == "history":
        columns |= {VALID_FROM: Kind.TIMESTAMP, VALID_TO: Kind.TIMESTAMP}
    return columns


RESERVED = frozenset(metadata_columns("upsert")) | frozenset(metadata_columns("history"))
_RESERVED_FOLDED = {name.casefold(): name for name in RESERVED}


_KINDS_OF_JSON: Mapping[type, Kind | None] = {
    type(None): None,
    bool: Kind.BOOLEAN,
    int: Kind.INTEGER,
    float: Kind.FLOAT,
    str: Kind.TEXT,
    decimal.Decimal: Kind.NUMERIC,
    dict: Kind.JSON,
    list: Kind.JSON,
}
# What each column kind takes without guessing. Text columns of typed models hold timestamps,
# dates and decimals as validated strings. A float column takes the integers a double holds
# exactly, which `fits` looks at apart.
_FITS = frozenset(
    {(python, kind) for python, kind in _KINDS_OF_JSON.items() if kind is not None}
    | {(int, Kind.NUMERIC), (float, Kind.NUMERIC)}
    | {(str, Kind.TIMESTAMP), (str, Kind.DATE), (str, Kind.NUMERIC)}
)


def kind_of(value: Any) -> Kind | None:
    """The kind a decoded JSON value implies; None for null, which fits every column."""
    return _KINDS_OF_JSON.get(type(value), Kind.JSON)


def fits(value: Any, kind: Kind) -> bool:
    """Whether a decoded JSON value can be stored in a column of `kind` without guessing or
    rounding (a lookup by type: it runs for every field of every event; only an integer meeting a
    float column is looked at further, as a double holds integers exactly only up to 2^53).

    The lookup comes first: reading `Kind.FLOAT` off the enum class costs ~0.2 us (Python 3.11's
    `EnumType` has a `__getattr__`), which three integer fields per event made 2 % of B4's sink."""
    if value is None or (type(value), kind) in _FITS:
        return True
    return type(value) is int and kind is Kind.FLOAT and float(value) == value


def misfit(name: str, value: Any, kind: Kind) -> str:
    """Why `value` of field `name` does not fit its column of `kind` (see `fits`)."""
    if type(value) is int and kind is Kind.FLOAT:
        return (
            f"field {name!r} holds {value}, an integer its float column would round to "
            f"{float(value):.0f}, and outboxkit never rounds: map the topic through a model typing "
            "it int or Decimal"
        )
    return f"field {name!r} holds {kind_of(value)}, its column is {kind}"


def widened(value: Any, kind: Kind) -> Kind | None:
    """The kind a column of `kind` becomes to hold `value` without loss, or None if it cannot:
    an integer column takes an integer beyond 64 bits (a `Decimal` with no fraction) as numeric."""
    if kind is Kind.INTEGER and type(value) is decimal.Decimal and value == value.to_integral_value():
        return Kind.NUMERIC
    return None


WIDENINGS = frozenset({(Kind.INTEGER, Kind.NUMERIC)})  # (from, to): every value of one fits the other


def merged(stored: Mapping[str, Kind], working: Mapping[str, Kind]) -> dict[str, Kind]:
    """A table's columns as stored and as a working schema wants them: its new columns and kinds,
    except that a column another instance widened stays wide (the working schema is older)."""
    wide = {name: kind for name, kind in stored.items() if (working.get(name), kind) in WIDENINGS}
    return {**stored, **working, **wide}


def unheld(value: Any, dialect: str) -> str | None:
    """Why a numeric column of `dialect` cannot hold `value` exactly (it would round it or refuse
    it), or None if it can. A float counts as its shortest repr, the digits Kafka holds."""
    if value is None:
        return None
    try:
        number = decimal.Decimal(repr(value) if type(value) is float else value).normalize()
    except decimal.InvalidOperation:  # a text a numeric column does not take
        return f"holds {str(value)[:80]!r}, not a number"
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN or infinity: no column of ours holds one
        return f"holds {value}, not a finite number"
    whole, places = max(len(number.as_tuple().digits) + exponent, 0), max(-exponent, 0)
    most_whole, most_places = NUMERIC_DIGITS[dialect]
    if whole <= most_whole and places <= most_places:
        return None
    column = f"a numeric column on {dialect} ({SQL_TYPES[dialect][Kind.NUMERIC]})"
    where = (
        f"{places} digits after the point; {column} keeps {most_places} (and {most_whole} before it)"
        if places > most_places
        else f"{whole} digits before the point; {column} keeps {most_whole} (and {most_places} after it)"
    )
    return (
        f"holds {value}, with {where}, and outboxkit never rounds: round it in the producer, or use "
        "PostgreSQL, whose NUMERIC keeps every digit"
    )


def cell(value: Any) -> Any:
    """A value as the loaders take it: objects and arrays become their JSON text, every digit of
    their numbers kept."""
    if type(value) in (dict, list):
        return to_json(value).decode()
    return value


def to_json(value: Any, option: int = 0) -> bytes:
    """JSON of a decoded value with every digit: `Decimal`s as the numbers they are, and integers
    beyond 64 bits, which orjson refuses to encode, spelled out in a second pass (rare)."""
    try:
        return orjson.dumps(value, default=_number, option=option)
    except TypeError:
        return orjson.dumps(_spelt(value), default=_number, option=option)


def _number(value: Any) -> orjson.Fragment:
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"cannot load a {type(value).__name__} value")


def _spelt(value: Any) -> Any:
    """`value` with its integers beyond 64 bits as JSON fragments (their digits)."""
    if type(value) is dict:
        return {name: _spelt(item) for name, item in value.items()}
    if type(value) is list:
        return [_spelt(item) for item in value]
    if type(value) is int and value not in INT64:
        return orjson.Fragment(str(value))
    return value


def name_problem(name: str) -> str | None:
    """Why a payload field cannot be a column, or None if it can. Names are compared without
    case: DuckDB's are case-insensitive, and a table must take the same fields on every target."""
    reserved = _RESERVED_FOLDED.get(name.casefold())
    if reserved == name:
        return f"field {name!r} clashes with a column outboxkit adds (rename it in the producer)"
    if reserved is not None:
        return (
            f"field {name!r} clashes with {reserved!r}, a column outboxkit adds (names are compared "
            "without case): rename it in the producer"
        )
    if not name or len(name.encode(errors="replace")) > MAX_NAME:
        return f"field name {name[:80]!r} is empty or longer than {MAX_NAME} bytes"
    if not name.isprintable() or name.encode(errors="ignore").decode() != name:
        return f"field name {name[:80]!r} holds control characters or lone surrogates"
    return None


def case_twin(names: Iterable[str], name: str, what: str = "column") -> str | None:
    """Why `name` cannot join columns `names`: one of them differs from it only in case, which
    DuckDB cannot tell apart (PostgreSQL could; the contract is what both hold)."""
    folded = name.casefold()
    twin = next((other for other in names if other.casefold() == folded), None)
    if twin is None:
        return None
    return (
        f"field {name!r} differs from {what} {twin!r} only in case, and column names must differ beyond "
        "case on every warehouse: rename one in the producer, or map the topic through a model that "
        f"names it otherwise (Field(alias={name!r}))"
    )


_PYTHON_KINDS: Mapping[type, Kind] = {
    bool: Kind.BOOLEAN,
    int: Kind.INTEGER,
    float: Kind.FLOAT,
    str: Kind.TEXT,
    decimal.Decimal: Kind.NUMERIC,
    datetime.datetime: Kind.TIMESTAMP,
    datetime.date: Kind.DATE,
}


def model_columns(model: type[BaseModel]) -> dict[str, Kind]:
    """Columns of a pydantic model's fields: `int | None` is an integer column, lists are JSON."""
    columns: dict[str, Kind] = {}
    for name, field in model.model_fields.items():
        problem = name_problem(name) or case_twin(columns, name, "field")
        if problem is not None:
            raise ValueError(f"model {model.__name__}: {problem}")
        columns[name] = _annotation_kind(field.annotation)
    return columns


def _annotation_kind(annotation: Any) -> Kind:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        present = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _annotation_kind(present[0]) if len(present) == 1 else Kind.JSON
    if origin is typing.Literal:
        return kind_of(typing.get_args(annotation)[0]) or Kind.TEXT
    if isinstance(annotation, type):
        for python_type, kind in _PYTHON_KINDS.items():
            if issubclass(annotation, python_type):
                return kind
    return Kind.JSON
