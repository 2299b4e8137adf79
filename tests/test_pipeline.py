"""What the minimal pipeline already promises, shown against the real broker and warehouses.

The full proofs (SIGKILL at every step, gap-safe PostgreSQL capture, rebalances) belong to the
relay and sink issues; these pin the mechanisms they build on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from outbox.kafka_settings import KafkaSettings
from relay import FencedError, SqliteCapture
from relay.errors import CaptureError, ExitCode
from sink import PoisonRecordError, Sink, SqlWriter, WarehouseConsumer
from sink.errors import SinkConfigError
from sink.writer import Delivered
from tests.conftest import Source
from tests.helpers import committed_event_ids, emit, envelope, produce

Names = Callable[[str], str]


def test_a_restarted_relay_resumes_after_its_checkpoint_and_publishes_nothing_twice(
    kafka: KafkaSettings, source: Source
) -> None:
    first_ids = emit(source.app, source.topic, 3)
    assert source.relay().run(lambda: False, drain=True).published == 3

    later_ids = emit(source.app, source.topic, 2)
    second = source.relay()
    assert second.stats.position.after_id == 3
    assert second.run(lambda: False, drain=True).published == 2

    assert committed_event_ids(kafka, source.topic) == first_ids + later_ids


def test_a_relay_fenced_by_a_newer_instance_stops_and_its_batch_never_becomes_visible(
    kafka: KafkaSettings, source: Source
) -> None:
    ids = emit(source.app, source.topic, 4)
    zombie = source.relay()
    successor = source.relay()  # same source, same transactional id: fences the first

    with pytest.raises(FencedError) as fenced:
        zombie.step()
    assert fenced.value.exit_code == ExitCode.FENCED

    assert successor.run(lambda: False, drain=True).published == 4
    assert committed_event_ids(kafka, source.topic) == ids


def test_sqlite_capture_refuses_a_database_where_id_order_is_not_commit_order() -> None:
    with pytest.raises(CaptureError, match="skips rows"):
        SqliteCapture(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))


@pytest.fixture(params=["duckdb", "postgresql"])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Every writer test runs against each warehouse target."""
    if request.param == "duckdb":
        engine = create_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
        yield engine
        engine.dispose()
    else:
        yield request.getfixturevalue("pg_engine")


def test_a_batch_delivered_twice_is_applied_once(warehouse: Engine) -> None:
    writer = SqlWriter(warehouse)
    batch = [Delivered(envelope("orders", n), partition=0, offset=n) for n in range(3)]

    assert writer.write("g", batch) == 3
    assert writer.write("g", batch) == 0
    assert writer.stored_offsets("g", ["orders"]) == {("orders", 0): 3}


def test_a_duplicate_that_reached_kafka_at_a_new_offset_is_absorbed(warehouse: Engine) -> None:
    writer = SqlWriter(warehouse)
    original = envelope("orders", 1)
    writer.write("g", [Delivered(original, partition=0, offset=0)])

    assert writer.write("g", [Delivered(original, partition=0, offset=7)]) == 0
    assert writer.stored_offsets("g", ["orders"]) == {("orders", 0): 8}


def test_the_sink_refuses_read_uncommitted(kafka: KafkaSettings) -> None:
    with pytest.raises(SinkConfigError, match="read_committed"):
        WarehouseConsumer(kafka, "g", ["orders"], lambda topics: {}, isolation_level="read_uncommitted")


def run_sink(kafka: KafkaSettings, writer: SqlWriter, group: str, topic: str) -> int:
    consumer = WarehouseConsumer(kafka, group, [topic], lambda topics: writer.stored_offsets(group, topics))
    return Sink(consumer, writer, group).run(lambda: False, drain=True).applied


def test_a_restarted_sink_resumes_from_the_warehouse_offsets_not_from_kafka(
    kafka: KafkaSettings, new_topic: Callable[..., str], unique_name: Names, tmp_path: Path
) -> None:
    topic, group = new_topic(), unique_name("g")
    writer = SqlWriter(create_engine(f"duckdb:///{tmp_path / 'w.duckdb'}"))
    produce(kafka, [envelope(topic, n) for n in range(3)], topic)
    assert run_sink(kafka, writer, group, topic) == 3

    produce(kafka, [envelope(topic, n) for n in range(3, 5)], topic)
    assert run_sink(kafka, writer, group, topic) == 2
    assert writer.stored_offsets(group, [topic]) == {(topic, 0): 5}


def test_a_poison_record_stops_the_sink_after_the_good_ones_and_is_read_again_on_restart(
    kafka: KafkaSettings, new_topic: Callable[..., str], unique_name: Names, tmp_path: Path
) -> None:
    topic, group = new_topic(), unique_name("g")
    writer = SqlWriter(create_engine(f"duckdb:///{tmp_path / 'w.duckdb'}"))
    produce(kafka, [envelope(topic, 0), envelope(topic, 1), b"\x00not an event", envelope(topic, 3)], topic)

    for _ in range(2):  # and again after a restart: the record is not skipped, so nothing is lost
        with pytest.raises(PoisonRecordError, match=rf"{topic}\[0\]@2 cannot be applied") as poison:
            run_sink(kafka, writer, group, topic)
        assert poison.value.raw == b"\x00not an event"
        assert writer.stored_offsets(group, [topic]) == {(topic, 0): 2}
