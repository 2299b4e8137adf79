"""The pgoutput decoder reads the wire format of PostgreSQL's logical replication messages exactly:
built here byte by byte from the protocol's documentation, so a decoding shortcut cannot shift a
field unnoticed (the WAL capture tests see only what a live server happens to send)."""

from __future__ import annotations

import struct

import pytest

from relay.capture import pgoutput
from relay.errors import CaptureError

BIG_OID = 3_000_000_000  # above 2**31: an oid is unsigned


def _string(text: str) -> bytes:
    return text.encode() + b"\0"


def _relation(oid: int, columns: list[str]) -> bytes:
    described = b"".join(b"\0" + _string(name) + struct.pack(">Ii", 25, -1) for name in columns)
    table = struct.pack(">I", oid) + _string("public") + _string("outbox") + b"d"  # d: replica identity
    return b"R" + table + struct.pack(">H", len(columns)) + described


def _insert(oid: int, values: list[bytes | None], kind: bytes = b"t") -> bytes:
    encoded = b"".join(b"n" if v is None else kind + struct.pack(">I", len(v)) + v for v in values)
    return b"I" + struct.pack(">I", oid) + b"N" + struct.pack(">H", len(values)) + encoded


def test_an_insert_carries_its_values_as_text_and_nulls_in_column_order() -> None:
    values = [b"1", None, "caf\u00e9 \u2615".encode(), b"", b"x" * 70_000]

    insert = pgoutput.parse(_insert(7, values))

    assert insert == pgoutput.Insert(7, ("1", None, "caf\u00e9 \u2615", "", "x" * 70_000))


def test_a_relation_and_its_inserts_name_the_same_table_for_oids_above_two_to_the_31() -> None:
    relation = pgoutput.parse(_relation(BIG_OID, ["id", "payload"]))
    insert = pgoutput.parse(_insert(BIG_OID, [b"1", b"{}"]))

    assert relation == pgoutput.Relation(BIG_OID, "public", "outbox", ("id", "payload"))
    assert isinstance(insert, pgoutput.Insert)
    assert insert.oid == BIG_OID


def test_a_binary_value_is_refused_with_what_to_check() -> None:
    with pytest.raises(CaptureError, match="asking for binary values"):
        pgoutput.parse(_insert(7, [b"\x00\x01"], kind=b"b"))


def test_a_transaction_is_framed_by_its_commit_lsn_and_messages_keep_their_content() -> None:
    begin = b"B" + struct.pack(">QqI", 0x1_0000_0010, 0, 4_000_000_000)
    commit = b"C\0" + struct.pack(">QQq", 0x1_0000_0010, 0x1_0000_0040, 0)
    message = b"M\x01" + struct.pack(">Q", 0x1_0000_0008) + _string("p:1") + struct.pack(">I", 3) + b"{}\n"

    assert pgoutput.parse(begin) == pgoutput.Begin(commit_lsn=0x1_0000_0010, xid=4_000_000_000)
    assert pgoutput.parse(commit) == pgoutput.Commit(commit_lsn=0x1_0000_0010, end_lsn=0x1_0000_0040)
    assert pgoutput.parse(message) == pgoutput.LogicalMessage(True, 0x1_0000_0008, "p:1", b"{}\n")


def test_messages_capture_does_not_need_are_none() -> None:
    assert pgoutput.parse(b"U" + struct.pack(">I", 7)) is None  # an update: not published
