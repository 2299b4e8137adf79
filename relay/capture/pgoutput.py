"""The few messages of PostgreSQL's `pgoutput` plugin (protocol version 1) that WAL capture needs.

Decoded from the wire format of PostgreSQL's "Logical Replication Message Formats": a one-byte
message type, then big-endian integers, NUL-terminated strings and, for a row, its columns in
text form. Without streaming (protocol 1), pgoutput sends each transaction whole, at its commit,
in commit order: `Begin`, `Relation` (before the first row of a table, and again when it
changed), `Insert`..., `Commit`. With the `messages` option (PostgreSQL 14+) the logical decoding
messages of `pg_logical_emit_message` come too (`LogicalMessage`): a transactional one among its
transaction's changes, in their order; a non-transactional one at once, outside any transaction.
Every other message (updates, deletes, truncates, origins, types) is returned as None: the
publication publishes inserts only, and the relay needs no more. Pure: bytes in, dataclasses out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from relay.errors import CaptureError


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts; `commit_lsn` is where its commit record is (what orders transactions)."""

    commit_lsn: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's layout: the column names, in the order an `Insert` carries their values."""

    oid: int
    namespace: str
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    """A new row of table `oid`: each column's value in PostgreSQL's text form (None for NULL)."""

    oid: int
    values: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message of `pg_logical_emit_message(transactional, prefix, content)`, written at `lsn`.
    Messages belong to no table: every slot of the database receives every one, whatever its
    publications, and decoding tells them apart by `prefix` only."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Relation | Insert | LogicalMessage | None


class _Reader:
    """Reads the message's fields in order."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 1  # past the message type

    def number(self, size: int) -> int:
        value = int.from_bytes(self._data[self._at : self._at + size], "big", signed=True)
        self._at += size
        return value

    def raw(self, size: int) -> bytes:
        value = self._data[self._at : self._at + size]
        self._at += size
        return value

    def string(self) -> str:
        end = self._data.index(b"\0", self._at)
        value = self._data[self._at : end].decode()
        self._at = end + 1
        return value


def parse(data: bytes) -> Message:
    """The message in `data` (one XLogData payload), or None for one capture does not need."""
    parser = _PARSERS.get(data[:1])
    return None if parser is None else parser(_Reader(data))


def _begin(reader: _Reader) -> Begin:
    commit_lsn = reader.number(8)
    reader.number(8)  # the commit time
    return Begin(commit_lsn, reader.number(4) & 0xFFFFFFFF)


def _commit(reader: _Reader) -> Commit:
    reader.number(1)  # flags, none defined
    return Commit(commit_lsn=reader.number(8), end_lsn=reader.number(8))


def _relation(reader: _Reader) -> Relation:
    oid, namespace, name = reader.number(4), reader.string(), reader.string()
    reader.number(1)  # replica identity: inserts do not need it
    columns = []
    for _ in range(reader.number(2)):
        reader.number(1)  # flags (part of the key)
        columns.append(reader.string())
        reader.number(4)  # type oid: values come as text, converted by column name
        reader.number(4)  # type modifier
    return Relation(oid, namespace or "pg_catalog", name, tuple(columns))


def _insert(reader: _Reader) -> Insert:
    oid = reader.number(4)
    reader.raw(1)  # 'N': a new tuple follows
    return Insert(oid, tuple(_value(reader) for _ in range(reader.number(2))))


def _message(reader: _Reader) -> LogicalMessage:
    transactional = reader.number(1) & 1 == 1  # the flags: 1 for a transactional message
    lsn, prefix = reader.number(8), reader.string()
    return LogicalMessage(transactional, lsn, prefix, reader.raw(reader.number(4)))


def _value(reader: _Reader) -> str | None:
    kind = reader.raw(1)
    if kind == b"n":
        return None
    if kind == b"t":
        return reader.raw(reader.number(4)).decode()
    raise CaptureError(
        f"pgoutput sent a column of kind {kind!r} in an insert (only text and NULL are expected): "
        "is the replication connection asking for binary values?"
    )


_PARSERS: dict[bytes, Callable[[_Reader], Message]] = {
    b"B": _begin,
    b"C": _commit,
    b"R": _relation,
    b"I": _insert,
    b"M": _message,
}
