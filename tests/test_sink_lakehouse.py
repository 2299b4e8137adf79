"""What a lakehouse warehouse adds to the sink contract (`test_sink_contract.py`): commits that
race, time travel, partitioned tables and maintenance, on DuckLake with either catalog."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from sink import TableMapping, offsets
from sink.loaders import loader_for
from tests.sinkkit import Settle, message

LAKES = pytest.mark.parametrize("warehouse_url", ["ducklake", "ducklake+postgresql"], indirect=True)
UPSERT = TableMapping(topic="things", table="things")


@LAKES
@pytest.mark.parametrize("stored", [None, 2], ids=["first-offsets", "moved-offsets"])
def test_of_two_batches_racing_from_the_same_offsets_only_one_commits(
    warehouse: Engine, stored: int | None
) -> None:
    """A zombie's batch, open while the partition's new owner commits its own from the same stored
    offset, fails at commit and leaves nothing. DuckLake lets concurrent inserts through, so the
    first offsets of a partition (two INSERTs) are the case to watch."""
    settle = Settle(warehouse, [UPSERT])
    if stored is not None:
        settle(*(message("things", n, key=f"old{n}") for n in range(stored)))
    loader = loader_for(warehouse.dialect.name, warehouse.driver)
    conn = warehouse.connect()
    zombie = conn.begin()
    loader.guard(conn)
    offsets.advance(conn, "g", {("things", 0): (stored, 100)})

    settle.write(*(message("things", n, key=f"new{n}") for n in range(stored or 0, 5)))  # the new owner

    with pytest.raises(SQLAlchemyError) as refused:
        zombie.commit()
    conn.close()
    assert loader.conflicted(refused.value.orig)
    assert settle.writer.stored_offsets("g", ["things"]) == {("things", 0): 5}
    keys = {f"old{n}" for n in range(stored or 0)} | {f"new{n}" for n in range(stored or 0, 5)}
    assert {row["_key"] for row in settle.rows("things")} == keys


@LAKES
def test_without_the_commit_guard_two_first_offsets_would_both_commit(warehouse: Engine) -> None:
    """Why every batch updates `outboxkit_commits`: DuckLake finds no conflict between two
    transactions that only insert, so the offsets' compare-and-set alone would let both in."""
    Settle(warehouse, [UPSERT])  # the bookkeeping tables
    first, second = warehouse.connect(), warehouse.connect()
    for conn in (first, second):
        conn.begin()
        offsets.advance(conn, "g", {("things", 0): (None, 5)})
    first.commit()
    second.commit()
    with warehouse.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outboxkit_offsets")).scalar() == 2
    first.close()
    second.close()
