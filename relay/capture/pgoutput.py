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

import struct
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
    return None if parser is None else parser(data)


def _begin(data: bytes) -> Begin:
    reader = _Reader(data)
    commit_lsn = reader.number(8)
    reader.number(8)  # the commit time
    return Begin(commit_lsn, reader.number(4) & 0xFFFFFFFF)


def _commit(data: bytes) -> Commit:
    reader = _Reader(data)
    reader.number(1)  # flags, none defined
    return Commit(commit_lsn=reader.number(8), end_lsn=reader.number(8))


def _relation(data: bytes) -> Relation:
    reader = _Reader(data)
    oid, namespace, name = reader.number(4) & 0xFFFFFFFF, reader.string(), reader.string()
    reader.number(1)  # replica identity: inserts do not need it
    columns = []
    for _ in range(reader.number(2)):
        reader.number(1)  # flags (part of the key)
        columns.append(reader.string())
        reader.number(4)  # type oid: values come as text, converted by column name
        reader.number(4)  # type modifier
    return Relation(oid, namespace or "pg_catalog", name, tuple(columns))


_TEXT, _NULL = ord("t"), ord("n")
_OID_AND_COUNT = struct.Struct(">IxH")  # the table's oid, 'N' (a new tuple follows), the column count
_SIZE = struct.Struct(">I")


def _insert(data: bytes) -> Insert:
    """An `Insert`, read in one loop without a `_Reader`: WAL capture decodes one per captured row,
    and a method call per field made this decoding most of the relay's CPU per event (profiled)."""
    oid, count = _OID_AND_COUNT.unpack_from(data, 1)
    values: list[str | None] = []
    add, size_at = values.append, _SIZE.unpack_from  # bound once: looked up per column otherwise
    at = 1 + _OID_AND_COUNT.size
    for _ in range(count):
        kind = data[at]
        if kind == _TEXT:
            (size,) = size_at(data, at + 1)
            at += 5 + size
            add(data[at - size : at].decode())
        elif kind == _NULL:
            add(None)
            at += 1
        else:
            raise CaptureError(
                f"pgoutput sent a column of kind {bytes([kind])!r} in an insert (only text and NULL are "
                "expected): is the replication connection asking for binary values?"
            )
    return Insert(oid, tuple(values))


def _message(data: bytes) -> LogicalMessage:
    reader = _Reader(data)
    transactional = reader.number(1) & 1 == 1  # the flags: 1 for a transactional message
    lsn, prefix = reader.number(8), reader.string()
    return LogicalMessage(transactional, lsn, prefix, reader.raw(reader.number(4)))


_PARSERS: dict[bytes, Callable[[bytes], Message]] = {
    b"B": _begin,
    b"C": _commit,
    b"R": _relation,
    b"I": _insert,
    b"M": _message,
}
