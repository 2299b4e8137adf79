"""A composite primary key is one aggregate per row, end to end: in the outbox, in Kafka and in
the warehouse — also when a part holds the separator `:` or the escape `\\`."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from outbox import SETTINGS_KEY, OutboxSettings
from runtime.kafka import KafkaSettings
from sink import SinkSettings, TableMapping, sink_from_settings
from tests.conftest import Source
from tests.helpers import committed_records, rows
from tests.models import Stock

# Joined by ':' without escaping, each pair was one key: "x:y:z", then "a\:b\:c".
LOOKALIKES = [("x:y", "z"), ("x", "y:z"), ("a\\", "b:c"), ("a:b\\", "c")]
KEYS = ["x\\:y:z", "x:y\\:z", "a\\\\:b\\:c", "a\\:b\\\\:c"]


def test_rows_whose_joined_parts_look_alike_are_distinct_aggregates_in_kafka_and_the_warehouse(
    kafka: KafkaSettings, source: Source, warehouse_url: str, unique_name: Callable[[str], str]
) -> None:
    settings = OutboxSettings(topic_template=source.topic)
    with Session(source.app, info={SETTINGS_KEY: settings}) as session, session.begin():
        session.add_all(Stock(warehouse=w, sku=s, quantity=n) for n, (w, s) in enumerate(LOOKALIKES))
    assert source.relay().run(lambda: False, drain=True).published == 4

    records = committed_records(kafka, source.topic)
    assert [(r.key, r.headers["outboxkit-aggregate-version"]) for r in records] == [(k, "1") for k in KEYS]

    sink = sink_from_settings(
        SinkSettings(
            _env_file=None,  # type: ignore[call-arg]
            warehouse_url=warehouse_url,
            kafka=kafka,
            group_id=unique_name("g"),
            tables=[TableMapping(topic=source.topic, table="stock")],
            poll_timeout=0.2,
        )
    )
    deadline = time.monotonic() + 60
    assert sink.run(lambda: time.monotonic() > deadline, drain=True).applied == 4
    assert rows(warehouse_url, "SELECT _key, _version FROM stock ORDER BY _key") == sorted(
        (key, 1) for key in KEYS
    )
