"""The sink-writer contract, run against every warehouse target (DuckDB, PostgreSQL, DuckLake).

Each test settles in-memory Kafka records through the same path as the running sink (decode ->
map -> one warehouse transaction with the offsets) and reads the real tables back.
"""

from __future__ import annotations

import datetime
import decimal
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, text

from sink import PartitionMovedError, TableMapping, WarehouseError
from sink.columns import Kind
from sink.loaders import loader_for
from sink.writer import SqlWriter
from tests.conftest import WAREHOUSES, url_of_warehouse
from tests.sinkkit import T0, Settle, message, tombstone

UPSERT = TableMapping(topic="things", table="things")


@pytest.fixture(params=WAREHOUSES)
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The contract holds on every warehouse target, DuckLake with either catalog."""
    return url_of_warehouse(request, tmp_path)


def duckdb_types(warehouse: Engine) -> bool:
    """Whether the warehouse has DuckDB's column types (a DuckDB file, DuckLake)."""
    return loader_for(warehouse.dialect.name, warehouse.driver).dialect == "duckdb"


def test_a_batch_and_its_offsets_commit_together(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(*(message("things", n, key=f"k{n}") for n in range(3)))

    assert [row["n"] for row in settle.rows("things")] == [0, 1, 2]
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 3}


def test_a_replayed_range_changes_nothing(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT, TableMapping(topic="things", table="log", mode="append")])
    records = [message("things", n, key=f"k{n % 2}", event_id=f"e{n}") for n in range(4)]
    settle(*records)
    before = (settle.rows("things"), settle.rows("log", "_event_id"))

    settle.positions[("things", 0)] = 4  # as after `sink replay` rewound to 0 and re-read
    again = settle(*records)

    assert (again.applied, again.skipped) == (0, 8)
    assert (settle.rows("things"), settle.rows("log", "_event_id")) == before


def test_an_older_version_never_overwrites_a_newer_row(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, payload={"n": "new"}, version=5))
    outcome = settle(message("things", 1, payload={"n": "old"}, version=3))

    assert outcome.skipped == 1
    assert [(row["n"], row["_version"]) for row in settle.rows("things")] == [("new", 5)]


def test_a_duplicate_that_reached_kafka_at_a_new_offset_is_skipped_in_every_mode(warehouse: Engine) -> None:
    mappings = [
        UPSERT,
        TableMapping(topic="things", table="log", mode="append"),
        TableMapping(topic="things", table="versions", mode="history"),
    ]
    settle = Settle(warehouse, mappings)
    settle(message("things", 0, event_id="e1", version=1))
    outcome = settle(message("things", 7, event_id="e1", version=1))  # same event, republished

    assert (outcome.applied, outcome.skipped) == (0, 3)
    assert [len(settle.rows(table)) for table in ("things", "log", "versions")] == [1, 1, 1]
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 8}


def test_upsert_keeps_the_newest_state_per_key_within_one_batch(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(
        message("things", 0, key="a", payload={"n": 1}),
        message("things", 1, key="a", payload={"n": 2}),
        message("things", 2, key="b", payload={"n": 3}),
    )

    assert [(row["_key"], row["n"], row["_version"]) for row in settle.rows("things")] == [
        ("a", 2, 2),
        ("b", 3, 3),
    ]


def test_a_hard_delete_removes_the_row_and_a_replayed_create_does_not_bring_it_back(
    warehouse: Engine,
) -> None:
    settle = Settle(warehouse, [UPSERT])
    create = message("things", 0, key="a", event_type="ThingCreated", version=1)
    settle(create, message("things", 1, key="a", event_type="ThingDeleted", version=2))
    assert settle.rows("things") == []

    settle.positions[("things", 0)] = 2
    assert settle(create).skipped == 1
    assert settle.rows("things") == []
    assert settle(message("things", 2, key="a", event_type="ThingCreated", version=3)).applied == 1
    assert [row["_version"] for row in settle.rows("things")] == [3]


def test_a_soft_delete_keeps_the_row_flagged(warehouse: Engine) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="things", deletes="soft")])
    settle(message("things", 0, key="a", payload={"n": 1}))
    settle(message("things", 1, key="a", event_type="ThingDeleted", payload={"n": 1}))
    settle(message("things", 2, key="b", payload={"n": 2}), tombstone("things", 3, "b"))

    rows = settle.rows("things")
    assert [(row["_key"], row["n"], row["_deleted"]) for row in rows] == [("a", 1, True), ("b", 2, True)]


def test_a_tombstone_deletes_its_key_and_one_for_an_unknown_key_is_a_dead_letter(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a"))
    outcome = settle(tombstone("things", 1, "a"), tombstone("things", 2, "nobody"))

    assert settle.rows("things") == []
    assert [letter.reason for letter in outcome.dead_letters] == [
        "tombstone for key 'nobody', which table things does not hold"
    ]
    assert [(row["offset"], row["action"]) for row in settle.dead_letters()] == [(2, "dead-letter")]
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 3}


def test_append_mode_is_the_event_log_unique_by_event_id(warehouse: Engine) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="log", mode="append")])
    settle(
        message("things", 0, event_id="e0"), message("things", 1, event_id="e1", event_type="ThingDeleted")
    )
    settle(message("things", 2, event_id="e0"), tombstone("things", 3, "k1"))

    rows = settle.rows("log", "_offset")
    assert [(row["_event_id"], row["_event_type"], row["_offset"]) for row in rows] == [
        ("e0", "ThingUpdated", 0),
        ("e1", "ThingDeleted", 1),
        ("kafka:things:0:3", "tombstone", 3),
    ]


def test_a_topic_split_by_event_type_feeds_each_table_its_types_and_dead_letters_only_the_unknown(
    warehouse: Engine,
) -> None:
    settle = Settle(
        warehouse,
        [
            TableMapping(topic="things", table="states", event_types=["ThingUpdated"]),
            TableMapping(topic="things", table="audits", mode="append", event_types=["ThingAudited"]),
        ],
    )
    outcome = settle(
        message("things", 0, key="a", event_id="e0"),
        message("things", 1, key="a", event_id="e1", event_type="ThingAudited"),
        message("things", 2, key="a", event_id="e2", event_type="Unheard"),
    )

    assert [row["_event_id"] for row in settle.rows("states")] == ["e0"]
    assert [row["_event_id"] for row in settle.rows("audits")] == ["e1"]
    assert [letter.reason for letter in outcome.dead_letters] == [
        "table states: event type 'Unheard' is not one this table takes; "
        "table audits: event type 'Unheard' is not one this table takes"
    ]


def test_history_mode_answers_as_of_queries(warehouse: Engine) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="versions", mode="history")])
    settle(message("things", 0, key="a", payload={"n": 10}), message("things", 1, key="a", payload={"n": 11}))
    settle(message("things", 2, key="a", payload={"n": 12}), message("things", 3, key="b", payload={"n": 20}))
    settle(message("things", 4, key="b", event_type="ThingDeleted", payload={"n": 20}))

    def as_of(second: float) -> list[tuple[str, int]]:
        at = datetime.datetime.fromtimestamp(T0 / 1000 + second, datetime.UTC)
        query = text(
            "SELECT _key, n FROM versions "
            "WHERE _valid_from <= :at AND (_valid_to IS NULL OR _valid_to > :at) ORDER BY _key"
        )
        with warehouse.connect() as conn:
            return [tuple(row) for row in conn.execute(query, {"at": at})]  # type: ignore[misc]

    assert as_of(0.5) == [("a", 10)]
    assert as_of(1.5) == [("a", 11)]
    assert as_of(3.5) == [("a", 12), ("b", 20)]
    assert as_of(4.5) == [("a", 12)]  # b was deleted at 4s
    assert len(settle.rows("versions")) == 4


def test_a_version_may_jump_by_max_version_jump_and_no_further_and_a_new_key_takes_any(
    warehouse: Engine,
) -> None:
    mappings = [UPSERT, TableMapping(topic="things", table="versions", mode="history")]
    settle = Settle(warehouse, mappings)
    settle(message("things", 0, key="a", version=1), message("things", 1, key="b", version=500_000))
    outcome = settle(
        message("things", 2, key="a", version=10_001),  # 10,000 other events of "a" between: fine
        message("things", 3, key="a", version=20_002),  # a jump no table of this topic expects
        message("things", 4, key="a", version=10_002),
    )

    assert [(row["_key"], row["_version"]) for row in settle.rows("things")] == [
        ("a", 10_002),
        ("b", 500_000),
    ]
    assert len(settle.rows("versions")) == 4
    assert outcome.applied == 4
    [letter] = settle.dead_letters()
    assert (letter["offset"], letter["action"]) == (3, "dead-letter")
    assert letter["reason"].startswith(
        "untrusted record: version 20002 of key 'a' is 10001 above the version"
    )


def test_a_new_optional_field_adds_a_nullable_column(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"n": 1}))
    settle(message("things", 1, key="b", payload={"n": 2, "colour": "red"}, schema_version=2))

    rows = settle.rows("things")
    assert [(row["n"], row["colour"]) for row in rows] == [(1, None), (2, "red")]


def test_a_misfit_of_the_known_schema_version_is_a_dead_letter(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"n": 1}))
    outcome = settle(message("things", 1, key="b", payload={"n": "one"}), message("things", 2, key="c"))

    assert [letter.reason for letter in outcome.dead_letters] == [
        "field 'n' holds text, its column is integer"
    ]
    assert [row["_key"] for row in settle.rows("things")] == ["a", "c"]  # later good records flow


def test_an_incompatible_schema_change_stops_its_partition_without_advancing(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"n": 1}))
    settle(
        message("things", 1, key="b", payload={"n": 2}),
        message("things", 2, key="c", payload={"n": "two"}, schema_version=2),
        message("things", 3, key="d", payload={"n": 4}),
        message("things", 0, key="x", partition=1),  # another partition goes on
    )

    assert [row["_key"] for row in settle.rows("things")] == ["a", "b", "x"]
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 2, ("things", 1): 1}
    [stop] = settle.dead_letters()
    assert (stop["offset"], stop["action"]) == (2, "stopped")
    assert "incompatible schema change: schema version 2" in stop["reason"]
    assert "raise its schema_version to 2" in stop["reason"]


class Thing(BaseModel):
    n: int
    label: str | None = None


TABLES = (("things", "upsert"), ("log", "append"))


def test_a_model_mapping_types_the_columns_and_dead_letters_what_does_not_fit(warehouse: Engine) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="things", model=Thing)])
    outcome = settle(
        message("things", 0, key="a", payload={"n": 1, "ignored": True}),
        message("things", 1, key="b", payload={"n": "many"}),
        message("things", 2, key="c", payload={"state": {"n": 3, "label": "x"}, "changed": {}}),
    )

    assert [(row["_key"], row["n"], row["label"]) for row in settle.rows("things")] == [
        ("a", 1, None),
        ("c", 3, "x"),
    ]
    assert "ignored" not in settle.rows("things")[0]
    assert [letter.reason for letter in outcome.dead_letters] == [
        "does not fit model Thing: n: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_a_batch_written_from_a_stale_offset_is_refused_whole(warehouse: Engine) -> None:
    """Two instances believing they own a partition (a rebalance, a paused zombie): the one whose
    idea of the stored offset is stale has its whole batch refused, and changes nothing."""
    first, zombie = Settle(warehouse, [UPSERT]), Settle(warehouse, [UPSERT])
    first(message("things", 0, key="a"))

    with pytest.raises(PartitionMovedError, match=r"things\[0\]: the stored offset moved"):
        zombie.write(message("things", 0, key="z"))  # it saw no stored offset, but one exists now
    zombie.reload()
    first(message("things", 1, key="b"))
    with pytest.raises(PartitionMovedError):
        zombie.write(message("things", 1, key="z"))  # it expects 1, the warehouse holds 2

    assert [row["_key"] for row in first.rows("things")] == ["a", "b"]
    assert first.writer.stored_offsets("g", ["things"]) == {("things", 0): 2}


def test_a_warehouse_error_mid_batch_leaves_nothing_partial(warehouse: Engine) -> None:
    typed = [TableMapping(topic="things", table=table, mode=mode, model=Thing) for table, mode in TABLES]
    settle = Settle(warehouse, typed)
    settle(message("things", 0, key="a"))
    too_big = 2**63  # a JSON integer, but beyond the model's BIGINT: refused after other rows

    with pytest.raises(WarehouseError):
        settle.write(message("things", 1, key="b"), message("things", 2, key="c", payload={"n": too_big}))
    assert [row["_key"] for row in settle.rows("things")] == ["a"]
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 1}


def test_a_value_the_warehouse_refuses_is_reported_as_data_not_as_an_outage(warehouse: Engine) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="things", model=Thing)])
    with pytest.raises(WarehouseError) as refused:
        settle.write(message("things", 0, key="c", payload={"n": 2**63}))
    assert refused.value.data


def test_field_names_that_need_quoting_become_columns_and_case_twins_are_dead_letters(
    warehouse: Engine,
) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"it's": 1, "50%": 2, "select": 3, "name": "x"}))
    outcome = settle(message("things", 1, key="b", payload={"Name": "y"}))

    [row] = settle.rows("things")
    assert (row["it's"], row["50%"], row["select"], row["name"]) == (1, 2, 3, "x")
    [letter] = outcome.dead_letters
    assert letter.reason.startswith("field 'Name' differs from column 'name' only in case")


def test_a_bad_record_with_a_long_event_id_is_still_a_dead_letter(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    outcome = settle(message("things", 0, payload=b"{", event_id="e" * 300))

    assert [row["event_id"] for row in settle.dead_letters()] == ["e" * 300]
    assert len(outcome.dead_letters) == 1


def test_a_version_header_that_is_not_a_plain_number_is_a_dead_letter(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    record = message("things", 0)
    headers = [
        (n, "²".encode() if n == "outboxkit-aggregate-version" else v) for n, v in record.headers() or []
    ]
    outcome = settle(message("things", 0, headers=headers), message("things", 1, key="b"))

    assert [letter.reason for letter in outcome.dead_letters] == [
        "outboxkit-aggregate-version is '²', not a number"
    ]
    assert [row["_key"] for row in settle.rows("things")] == ["b"]


def test_two_instances_widening_one_table_keep_each_others_columns(warehouse: Engine) -> None:
    first, second = Settle(warehouse, [UPSERT]), Settle(warehouse, [UPSERT])
    first(message("things", 0, key="a", payload={"n": 1}))
    second(message("things", 0, key="b", partition=1, payload={"n": 2, "colour": "red"}))
    first(message("things", 1, key="c", payload={"n": 3, "weight": 7}))  # its idea of the table is stale

    again = Settle(warehouse, [UPSERT])  # a restart reads the catalogue
    assert again.writer.schemas["things"].columns == {
        "n": Kind.INTEGER,
        "colour": Kind.TEXT,
        "weight": Kind.INTEGER,
    }
    rows = again.rows("things")
    assert [(r["_key"], r["n"], r["colour"], r["weight"]) for r in rows] == [
        ("a", 1, None, None),
        ("b", 2, "red", None),
        ("c", 3, None, 7),
    ]


def test_raising_the_mappings_schema_version_lets_a_stopped_partition_go_on(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"n": 1}))
    incompatible = message("things", 1, key="b", payload={"n": "two"}, schema_version=2)
    settle(incompatible)
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 1}  # stopped there

    accepted = Settle(warehouse, [UPSERT.model_copy(update={"schema_version": 2})])  # the operator's fix
    outcome = accepted(incompatible, message("things", 2, key="c", payload={"n": 3}, schema_version=2))

    assert [letter.reason for letter in outcome.dead_letters] == [
        "field 'n' holds text, its column is integer"
    ]
    assert [row["_key"] for row in accepted.rows("things")] == ["a", "c"]
    assert accepted.writer.stored_offsets("g", ["things"]) == {("things", 0): 3}


def test_a_tombstone_after_a_delete_event_is_a_duplicate_not_a_dead_letter(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT, TableMapping(topic="things", table="versions", mode="history")])
    settle(message("things", 0, key="a"), message("things", 1, key="a", event_type="ThingDeleted"))
    outcome = settle(tombstone("things", 2, "a"))  # Debezium's pattern: a delete event, then a tombstone

    assert (outcome.applied, outcome.skipped, outcome.dead_letters) == (0, 2, [])


def test_with_policy_stop_a_tombstone_for_an_unknown_key_stops_its_partition(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT], policy="stop")
    settle(message("things", 0, key="a"), tombstone("things", 1, "nobody"), message("things", 2, key="b"))

    assert [row["_key"] for row in settle.rows("things")] == ["a"]
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 1}
    assert [(row["offset"], row["action"]) for row in settle.dead_letters()] == [(1, "stopped")]


@pytest.mark.parametrize("warehouse_url", ["postgresql", "ducklake+postgresql"], indirect=True)
def test_sinks_starting_together_on_a_new_warehouse_create_its_tables_once(warehouse: Engine) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            SqlWriter(warehouse, [UPSERT])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def kafka_holds(record_value: bytes | None) -> Any:
    """A payload as Kafka holds it: every digit of every number, as Python's exact types."""
    assert record_value is not None
    return json.loads(record_value, parse_float=decimal.Decimal)


def test_integers_beyond_64_bits_are_held_with_every_digit(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    records = [
        message("things", 0, key="a", payload={"big": 2**70, "n": 1}),  # the first value makes the column
        message("things", 1, key="b", payload={"big": 2**63 - 1, "n": 2**63}),  # n widens, big keeps
        message("things", 2, key="c", payload={"big": -(2**63), "n": -(2**63) - 1}),
        message("things", 3, key="d", payload={"big": 2**64, "n": 2**64 - 1}),
    ]
    settle(records[0])
    outcome = settle(*records[1:])  # n was an integer column: it widens, keeping its rows

    assert outcome.dead_letters == []
    held = [(row["big"], row["n"]) for row in settle.rows("things")]
    assert held == [(kafka_holds(r.value())["big"], kafka_holds(r.value())["n"]) for r in records]
    assert all(type(value) is decimal.Decimal for row in held for value in row)  # not floats


def test_json_fields_keep_every_digit_of_their_numbers(warehouse: Engine) -> None:
    value = (
        b'{"doc": {"big": 1180591620717411303424, "list": [18446744073709551616, -9223372036854775809],'
        b' "precise": 0.1234567890123456789, "tiny": 1e-400, "plain": 0.5}}'
    )
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, payload=value))

    [row] = settle.rows("things")
    assert json.loads(row["doc"], parse_float=decimal.Decimal) == kafka_holds(value)["doc"]


def test_high_precision_json_numbers_are_held_exactly_or_refused_with_the_reason(warehouse: Engine) -> None:
    """A number a double cannot hold (more than ~16 significant digits) is numeric, not float; a
    genuine float stays a float. DuckDB's numeric column keeps 9 decimal places: beyond those it
    is a dead letter that says so, never a rounded value."""
    value = b'{"precise": 0.1234567890123456789, "whole": 123456789012345678901234.5, "ratio": 0.1}'
    settle = Settle(warehouse, [UPSERT])
    outcome = settle(message("things", 0, key="a", payload=value), message("things", 1, key="b"))

    if duckdb_types(warehouse):
        assert [letter.reason for letter in outcome.dead_letters] == [
            "field 'precise' holds 0.1234567890123456789, with 19 digits after the point; a numeric "
            "column on duckdb (DECIMAL(38, 9)) keeps 9 (and 29 before it), and outboxkit never rounds: "
            "round it in the producer, or use PostgreSQL, whose NUMERIC keeps every digit"
        ]
        assert [row["_key"] for row in settle.rows("things")] == ["b"]
        return
    row = settle.rows("things")[0]
    assert (row["precise"], row["whole"]) == (kafka_holds(value)["precise"], kafka_holds(value)["whole"])
    assert (type(row["ratio"]), row["ratio"]) == (float, 0.1)


class Precise(BaseModel):
    amount: decimal.Decimal
    count: int | None = None


def test_a_models_decimals_keep_every_digit_or_are_refused_with_the_reason(warehouse: Engine) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="things", model=Precise)])
    as_number = b'{"amount": 0.1234567890123456789}'
    outcome = settle(
        message("things", 0, key="a", payload=as_number),
        message("things", 1, key="b", payload={"amount": "0.1234567890123456789"}),
        message("things", 2, key="c", payload={"amount": "12.5", "count": 3}),
    )

    amounts = [row["amount"] for row in settle.rows("things")]
    if duckdb_types(warehouse):
        assert [letter.source.offset for letter in outcome.dead_letters] == [0, 1]
        assert "with 19 digits after the point" in outcome.dead_letters[0].reason
        assert amounts == [decimal.Decimal("12.5")]
    else:
        assert amounts == [kafka_holds(as_number)["amount"], decimal.Decimal("0.1234567890123456789"), 12.5]


def test_an_integer_a_float_column_would_round_is_refused_with_the_reason(warehouse: Engine) -> None:
    """A float column takes integers, but a double holds them exactly only up to 2^53."""
    settle = Settle(warehouse, [UPSERT])
    unheld = 2**53 + 1
    outcome = settle(
        message("things", 0, key="a", payload={"ratio": 0.5}),  # the first value makes it a float column
        message("things", 1, key="b", payload={"ratio": unheld}),
        message("things", 2, key="c", payload={"ratio": 2**53}),  # a double holds this one
    )

    assert [letter.reason for letter in outcome.dead_letters] == [
        f"field 'ratio' holds {unheld}, an integer its float column would round to {2**53}, and "
        "outboxkit never rounds: map the topic through a model typing it int or Decimal"
    ]
    assert [(row["_key"], row["ratio"]) for row in settle.rows("things")] == [("a", 0.5), ("c", 2**53)]


def test_a_value_beyond_a_numeric_columns_range_is_refused_with_the_reason(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    huge = 10**30 + 1  # 31 digits; a double would hold 1e30
    outcome = settle(message("things", 0, key="a", payload={"n": huge}), message("things", 1, key="b"))

    if duckdb_types(warehouse):  # DECIMAL(38, 9): 29 digits before the point
        assert [letter.reason for letter in outcome.dead_letters] == [
            f"field 'n' holds {huge}, with 31 digits before the point; a numeric column on duckdb "
            "(DECIMAL(38, 9)) keeps 29 (and 9 after it), and outboxkit never rounds: "
            "round it in the producer, or use PostgreSQL, whose NUMERIC keeps every digit"
        ]
        assert [row["_key"] for row in settle.rows("things")] == ["b"]
    else:
        assert [row["n"] for row in settle.rows("things")] == [huge, 1]


def test_fields_that_differ_only_in_case_are_a_dead_letter_on_every_warehouse(warehouse: Engine) -> None:
    """DuckDB folds the case of names, PostgreSQL's quoted names keep it: the contract is the one
    both can hold, so a table written to either takes the same records."""
    settle = Settle(warehouse, [UPSERT, TableMapping(topic="things", table="versions", mode="history")])
    outcome = settle(
        message("things", 0, key="a", payload={"Name": "x", "name": "y"}),
        message("things", 1, key="b", payload={"n": 1, "_Valid_From": "2024-01-01"}),
        message("things", 2, key="c", payload={"n": 2}),
    )

    twins = (
        "field 'name' differs from field 'Name' only in case, and column names must differ beyond "
        "case on every warehouse: rename one in the producer, or map the topic through a model "
        "that names it otherwise (Field(alias='name'))"
    )
    bookkeeping = (
        "field '_Valid_From' clashes with '_valid_from', a column outboxkit adds (names are "
        "compared without case): rename it in the producer"
    )
    assert [letter.reason for letter in outcome.dead_letters] == [
        f"table things: {twins}; table versions: {twins}",
        f"table things: {bookkeeping}; table versions: {bookkeeping}",
    ]
    assert [row["_key"] for row in settle.rows("things")] == ["c"]
    assert [row["_key"] for row in settle.rows("versions")] == ["c"]


class Twins(BaseModel):
    Name: str
    name: str


def test_a_model_whose_fields_differ_only_in_case_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="model Twins: field 'name' differs from field 'Name' only in case"):
        TableMapping(topic="things", table="things", model=Twins)
