"""The latency histograms: commit -> published (relay) and commit -> applied (sink), per event,
from the time it was written to the outbox, as /metrics shows them."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, update

from outbox import outbox_table
from relay import RelaySettings, relay_from_settings
from runtime.kafka import KafkaSettings
from sink import Sink, SqlWriter, TableMapping, WarehouseConsumer
from sink.run import by_topic
from tests.helpers import emit, sqlite_app
from tests.processes import metric

AGO = datetime.timedelta(seconds=20)  # the events' age at start: above the 10 s bucket, within 30 s


def test_each_event_counts_from_its_write_to_its_kafka_commit_and_to_its_warehouse_commit(
    kafka: KafkaSettings, new_topic: Callable[..., str], unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    app, topic = sqlite_app(tmp_path), new_topic()
    emit(app, topic, 3)
    with app.begin() as conn:
        conn.execute(update(outbox_table).values(created_at=datetime.datetime.now(datetime.UTC) - AGO))
    relay = relay_from_settings(
        RelaySettings(
            database_url=f"sqlite:///{tmp_path / 'app.db'}",
            source_id=unique_name("src"),
            checkpoint_topic=unique_name("ckpt"),
            kafka=kafka,
        )
    )
    relay.run(lambda: False, drain=True)

    published = relay.metrics.render()
    assert "# TYPE outboxkit_relay_commit_to_published_seconds histogram" in published
    assert metric(published, 'outboxkit_relay_commit_to_published_seconds_bucket{le="10.0"}') == 0
    assert metric(published, 'outboxkit_relay_commit_to_published_seconds_bucket{le="30.0"}') == 3
    assert metric(published, "outboxkit_relay_commit_to_published_seconds_count") == 3
    assert metric(published, "outboxkit_relay_commit_to_published_seconds_sum") >= 3 * AGO.total_seconds()

    mappings = [TableMapping(topic=topic, table="things")]
    group = unique_name("g")
    writer = SqlWriter(create_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}"), mappings)
    consumer = WarehouseConsumer(kafka, group, [topic], lambda topics: writer.stored_offsets(group, topics))
    sink = Sink(consumer, writer, group, by_topic(mappings))
    assert sink.run(lambda: False, drain=True).applied == 3

    applied = sink.metrics.render()
    assert "# TYPE outboxkit_sink_commit_to_applied_seconds histogram" in applied
    assert metric(applied, 'outboxkit_sink_commit_to_applied_seconds_bucket{le="10.0"}') == 0
    assert metric(applied, 'outboxkit_sink_commit_to_applied_seconds_bucket{le="30.0"}') == 3
    assert metric(applied, 'outboxkit_sink_commit_to_applied_seconds_bucket{le="+Inf"}') == 3
    assert metric(applied, "outboxkit_sink_commit_to_applied_seconds_count") == 3
