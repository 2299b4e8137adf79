"""What a lakehouse warehouse adds to the sink contract (`test_sink_contract.py`): commits that
race, time travel, partitioned tables and maintenance, on DuckLake with either catalog."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from runtime.process import ExitCode
from sink import TableMapping, offsets
from sink.as_of import rows_as_of, snapshots
from sink.errors import SinkConfigError
from sink.loaders import loader_for
from sink.settings import SinkSettings
from tests.conftest import WAREHOUSES, url_of_warehouse
from tests.processes import outboxkit
from tests.sinkkit import T0, Settle, message

LAKES = pytest.mark.parametrize("warehouse_url", ["ducklake", "ducklake+postgresql"], indirect=True)
UPSERT = TableMapping(topic="things", table="things")


@pytest.fixture(params=WAREHOUSES)
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_of_warehouse(request, tmp_path)


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


@LAKES
def test_a_table_as_of_a_past_snapshot_or_its_time_is_exactly_what_was_committed_then(
    warehouse: Engine,
) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"n": 1}), message("things", 1, key="b", payload={"n": 2}))
    with warehouse.connect() as conn:
        then = snapshots(conn)[-1]
    settle(
        message("things", 2, key="a", payload={"n": 3}),
        message("things", 3, key="b", event_type="ThingDeleted"),
        message("things", 4, key="c", payload={"n": 4}),
    )

    with warehouse.connect() as conn:
        by_snapshot = rows_as_of(conn, "things", snapshot=then.id)
        by_time = rows_as_of(conn, "things", snapshot_at=then.committed_at)
        assert snapshots(conn)[-1].id > then.id
    assert by_snapshot == by_time
    names, rows = by_snapshot
    assert sorted((row[names.index("_key")], row[names.index("n")]) for row in rows) == [("a", 1), ("b", 2)]
    assert sorted((row["_key"], row["n"]) for row in settle.rows("things")) == [("a", 3), ("c", 4)]


@pytest.mark.parametrize("warehouse_url", WAREHOUSES, indirect=True)
def test_a_history_table_as_of_a_time_holds_each_keys_version_valid_then_by_the_events_times(
    warehouse: Engine,
) -> None:
    """On every warehouse, a history table answers "as of" by when the events were written (here
    their record times, 1 s apart), however late the sink applied them."""
    settle = Settle(warehouse, [TableMapping(topic="things", table="versions", mode="history")])
    settle(message("things", 0, key="a", payload={"n": 1}), message("things", 1, key="b", payload={"n": 2}))
    settle(
        message("things", 2, key="a", payload={"n": 3}),
        message("things", 3, key="b", event_type="ThingDeleted"),
    )
    between = datetime.datetime.fromtimestamp((T0 + 1500) / 1000, datetime.UTC)

    with warehouse.connect() as conn:
        names, rows = rows_as_of(conn, "versions", valid_at=between)
        latest = rows_as_of(conn, "versions", valid_at=datetime.datetime.now(datetime.UTC))[1]
    assert sorted((row[names.index("_key")], row[names.index("n")]) for row in rows) == [("a", 1), ("b", 2)]
    assert [(row[names.index("_key")], row[names.index("n")]) for row in latest] == [("a", 3)]


@pytest.mark.parametrize("warehouse_url", ["duckdb"], indirect=True)
def test_as_of_on_a_sql_warehouse_says_it_needs_a_history_table_or_a_lakehouse(warehouse: Engine) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0))
    with warehouse.connect() as conn:
        with pytest.raises(SinkConfigError, match="in upsert mode, which keeps only the latest state"):
            rows_as_of(conn, "things", valid_at=datetime.datetime.now(datetime.UTC))
        with pytest.raises(SinkConfigError, match="snapshots are a lakehouse's"):
            rows_as_of(conn, "things", snapshot=1)


@pytest.mark.parametrize("warehouse_url", ["ducklake"], indirect=True)
def test_sink_query_and_snapshots_read_a_lake_as_it_was(warehouse: Engine, warehouse_url: str) -> None:
    settle = Settle(warehouse, [UPSERT])
    settle(message("things", 0, key="a", payload={"n": 1}))
    settle(message("things", 1, key="a", payload={"n": 2}))
    warehouse.dispose()  # frees the catalog file for the commands' processes
    env = {
        "OUTBOXKIT_SINK_WAREHOUSE_URL": warehouse_url,
        "OUTBOXKIT_SINK_TABLES": json.dumps([UPSERT.model_dump(mode="json", exclude={"model"})]),
    }

    listed = outboxkit("sink", "snapshots", env=env)
    first_write = int(listed.stdout.splitlines()[-2].split("\t")[0])
    queried = outboxkit("sink", "query", "things", "--snapshot", str(first_write), env=env)
    refused = outboxkit("sink", "query", "things", "--valid-at", "2026-01-01T00:00:00+00:00", env=env)

    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["n"] for line in queried.stdout.splitlines()] == [1], queried.stderr
    assert refused.returncode == ExitCode.CONFIG
    assert "in upsert mode, which keeps only the latest state" in refused.stderr


def test_a_postgresql_catalog_that_cannot_be_reached_is_reported_without_its_password() -> None:
    engine = create_engine("ducklake+postgresql://etl:s3cret-pw@127.0.0.1:1/lake?data_path=/nonexistent")
    with pytest.raises(SQLAlchemyError) as failed:
        engine.connect()
    assert "127.0.0.1" in str(failed.value)
    assert "s3cret-pw" not in str(failed.value)


@LAKES
def test_a_partitioned_mapping_writes_one_directory_per_day_of_event_time(warehouse: Engine) -> None:
    mapping = TableMapping(topic="things", table="things", partition_by=("day(_event_time)",))
    settle = Settle(warehouse, [mapping])
    day = 86_400_000
    rows = 500  # more than DuckLake keeps inlined in its catalog: these go to Parquet files
    settle(*(message("things", n, key=f"k{n}", at_ms=T0 - day * (n % 2)) for n in range(rows)))

    with warehouse.connect() as conn:
        listed = conn.exec_driver_sql("SELECT data_file FROM ducklake_list_files('lake', 'things')")
        files = [path for (path,) in listed]
    days = {part for path in files for part in Path(path).parts if part.startswith("day=")}
    assert len(days) == 2, files
    assert len(settle.rows("things")) == rows


def test_partition_by_on_a_sql_warehouse_is_refused_at_start(tmp_path: Path) -> None:
    mapping = TableMapping(topic="things", table="things", partition_by=("day(_event_time)",))
    with pytest.raises(ValueError, match="partition_by \\(things\\) partitions lakehouse tables"):
        SinkSettings(warehouse_url=f"duckdb:///{tmp_path}/w.duckdb", tables=[mapping])


@pytest.mark.parametrize("warehouse_url", ["ducklake"], indirect=True)
def test_a_partition_key_on_a_column_the_table_lacks_stops_the_sink_with_what_to_name(
    warehouse: Engine,
) -> None:
    settle = Settle(warehouse, [TableMapping(topic="things", table="things", partition_by=("region",))])
    with pytest.raises(SinkConfigError, match="partition_by names 'region', which the table does not have"):
        settle(message("things", 0, payload={"n": 1}))
    assert settle.writer.stored_offsets("g", ["things"]) == {}
