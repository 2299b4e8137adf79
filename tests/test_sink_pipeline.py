"""The sink end to end: the real broker in front, each real warehouse behind.

Records are produced to fresh topics exactly as given (including broken ones), a sink built from
its settings drains them, and the warehouse tables, dead letters and stored offsets are read back.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message, TopicPartition
from confluent_kafka.admin import AdminClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_trace_id
from pydantic import BaseModel, SecretStr
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from outbox import SETTINGS_KEY, OutboxSettings, outbox_table
from runtime.kafka import KafkaSettings
from sink import (
    Sink,
    SinkConfigError,
    SinkSettings,
    SinkStats,
    TableMapping,
    WarehouseConsumer,
    WarehouseError,
    sink_from_settings,
)
from sink.replay import replay
from sink.run import by_topic
from sink.warehouse import Batch, Outcome
from sink.writer import SqlWriter
from tests.conftest import Source
from tests.helpers import committed_records, make_relay, rows
from tests.models import Thing
from tests.processes import get, metric, outboxkit
from tests.sinkkit import Settle, message, publish, tombstone
from wire import Signer
from wire.headers import HEADER_SIGNATURE

Names = Callable[[str], str]


@pytest.fixture
def topic(new_topic: Callable[..., str]) -> str:
    return new_topic(2)


def settings(
    kafka: KafkaSettings, url: str, group: str, tables: list[TableMapping], **more: Any
) -> SinkSettings:
    return SinkSettings(
        _env_file=None,  # type: ignore[call-arg]
        warehouse_url=url,
        kafka=kafka,
        group_id=group,
        tables=tables,
        poll_timeout=0.2,
        **more,
    )


def drain(config: SinkSettings) -> SinkStats:
    deadline = time.monotonic() + 60
    return sink_from_settings(config).run(lambda: time.monotonic() > deadline, drain=True)


def test_the_sink_refuses_read_uncommitted(kafka: KafkaSettings) -> None:
    with pytest.raises(SinkConfigError, match="read_committed"):
        WarehouseConsumer(kafka, "g", ["orders"], lambda topics: {}, isolation_level="read_uncommitted")


def test_the_sink_refuses_cooperative_rebalancing(kafka: KafkaSettings) -> None:
    cooperative = kafka.model_copy(
        update={"config": {"partition.assignment.strategy": SecretStr("cooperative-sticky")}}
    )
    with pytest.raises(SinkConfigError, match="eager rebalancing"):
        WarehouseConsumer(cooperative, "g", ["orders"], lambda topics: {})


def test_only_committed_kafka_transactions_reach_the_warehouse(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    publish(kafka, [message(topic, 0, key="aborted")], transactional_id=unique_name("tx"), abort=True)
    publish(kafka, [message(topic, 0, key="committed")], transactional_id=unique_name("tx"))
    log = TableMapping(topic=topic, table="log", mode="append")

    stats = drain(settings(kafka, warehouse_url, unique_name("g"), [log]))

    assert stats.applied == 1
    assert rows(warehouse_url, "SELECT _key FROM log") == [("committed",)]


def test_a_restarted_sink_resumes_from_the_warehouse_offsets_not_from_kafka(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    config = settings(
        kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="log", mode="append")]
    )
    publish(kafka, [message(topic, n, key=f"k{n}") for n in range(3)])
    assert drain(config).applied == 3

    publish(kafka, [message(topic, n, key=f"k{n}") for n in range(3, 5)])
    second = drain(config)

    assert (second.applied, second.skipped) == (2, 0)  # nothing re-read: Kafka holds no offsets for it
    assert rows(warehouse_url, "SELECT count(*) FROM log") == [(5,)]


class Order(BaseModel):
    n: int


def bad_and_good_records(topic: str) -> list[Message]:
    """One record of each kind of bad input the sink must survive, then a good one."""
    return [
        message(topic, 0, key="malformed", payload=b'{"n": 1'),
        message(topic, 1, key="wrong-type", payload={"n": "one"}),
        message(topic, 2, key="unknown-type", event_type="SomethingElse"),
        message(topic, 3, key=None),
        message(topic, 4, key=b"\xff\xfe"),
        message(topic, 5, key="oversized", payload={"n": 1, "blob": "x" * 3000}),
        tombstone(topic, 6, "never-seen"),
        message(topic, 7, key="infinite", payload=b'{"n": 1e400}'),
        message(topic, 8, key="good", payload={"n": 7}),
    ]


REASONS = [
    "the payload is not valid JSON: unexpected end of data: line 1 column 8 (char 7)",
    "does not fit model Order: n: Input should be a valid integer, unable to parse string as an integer",
    "event type 'SomethingElse' is not one this table takes",
    "the record has no key; outboxkit orders and dedupes by key",
    "the key is not UTF-8 text (b'\\xff\\xfe')",
    "the value is 3020 bytes, above max_record_bytes=2000",
    "tombstone for key 'never-seen', which table orders does not hold",
    "the payload holds a number beyond a double's range, which the sink cannot hold exactly: number is "
    "infinity when parsed as double: line 1 column 7 (char 6)",
]


def test_each_kind_of_bad_record_is_a_dead_letter_with_its_reason_and_good_ones_still_flow(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    records = bad_and_good_records(topic)
    publish(kafka, records)
    orders = TableMapping(topic=topic, table="orders", model=Order, event_types=["ThingUpdated"])

    stats = drain(settings(kafka, warehouse_url, unique_name("g"), [orders], max_record_bytes=2000))

    assert (stats.applied, stats.dead_letters) == (1, 8)
    assert rows(warehouse_url, "SELECT _key, n FROM orders") == [("good", 7)]
    letters = rows(
        warehouse_url, 'SELECT "offset", action, reason, key, value FROM outboxkit_dead_letters ORDER BY 1'
    )
    assert [reason for _, _, reason, _, _ in letters] == REASONS
    assert {action for _, action, _, _, _ in letters} == {"dead-letter"}
    for (offset, _, _, key, value), record in zip(letters, records, strict=False):  # kept whole, to replay
        assert (as_bytes(key), as_bytes(value)) == (record.key(), record.value()), offset
    assert rows(warehouse_url, 'SELECT "partition", next_offset FROM outboxkit_offsets') == [(0, 9)]


def as_bytes(value: bytes | memoryview | None) -> bytes | None:
    return None if value is None else bytes(value)


def test_with_policy_stop_a_bad_record_halts_only_its_partition_and_keeps_its_offset(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    publish(
        kafka,
        [
            message(topic, 0, key="a"),
            message(topic, 1, key="b", payload=b"{oops"),
            message(topic, 2, key="c"),
        ],
    )
    publish(kafka, [message(topic, 0, key="other", partition=1)])
    config = settings(
        kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")], poison_policy="stop"
    )

    for _ in range(2):  # and again after a restart: the record is read again, never skipped
        drain(config)
        assert rows(warehouse_url, "SELECT _key FROM t ORDER BY 1") == [("a",), ("other",)]
        assert sorted(rows(warehouse_url, 'SELECT "partition", next_offset FROM outboxkit_offsets')) == [
            (0, 1),
            (1, 1),
        ]

    [(action, reason)] = rows(warehouse_url, "SELECT action, reason FROM outboxkit_dead_letters")
    assert (action, reason) == (
        "stopped",
        "the payload is not valid JSON: unexpected character, expected a string key: line 1 column 2 "
        "(char 1) (poison_policy=stop: the partition waits here; fix the producer and `outboxkit sink "
        "replay`, or set poison_policy=dlq, then restart)",
    )


def cli(config: SinkSettings, *args: str) -> str:
    env = {
        "OUTBOXKIT_SINK_WAREHOUSE_URL": config.warehouse_url.get_secret_value(),
        "OUTBOXKIT_SINK_GROUP_ID": config.group_id,
        "OUTBOXKIT_SINK_TABLES": json.dumps(
            [m.model_dump(mode="json", exclude={"model"}) for m in config.tables]
        ),
        "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": config.kafka.bootstrap_servers,
    }
    done = outboxkit("--log-level", "WARNING", "sink", *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_status_shows_offsets_lag_tables_dead_letters_and_stops(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    publish(
        kafka,
        [message(topic, 0, key="a"), message(topic, 1, key="b", payload=b"[]"), message(topic, 2, key="c")],
    )
    publish(
        kafka,
        [message(topic, 0, key="d", partition=1), message(topic, 1, key="e", partition=1, payload=b"{")],
    )
    config = settings(kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")])
    drain(config)
    publish(kafka, [message(topic, 3, key="f", payload={"n": "text now"}, schema_version=2)])  # stops p0
    drain(config)
    publish(kafka, [message(topic, 4, key="g")])  # waits behind the stop

    report = json.loads(cli(config, "status", "--json"))

    by_partition = {p["partition"]: p for p in report["partitions"]}
    assert (by_partition[0]["stored"], by_partition[0]["lag"]) == (3, 2)
    assert "incompatible schema change" in by_partition[0]["stopped"]
    assert (by_partition[1]["stored"], by_partition[1]["lag"], by_partition[1]["stopped"]) == (2, 0, None)
    assert report["dead_letters"] == {topic: 2}
    assert report["tables"] == [
        {"table": "t", "topic": topic, "mode": "upsert", "columns": 1, "schema_version": 1}
    ]
    human = cli(config, "status")
    assert f"{topic}[0]: stored 3, end 5, lag 2; STOPPED: incompatible schema change" in human


def test_records_kafka_deleted_before_the_sink_read_them_stop_their_partition_until_the_gap_is_accepted(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    config = settings(kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")])
    publish(kafka, [message(topic, n, key=f"k{n}") for n in range(3)])
    drain(config)  # offsets 0-2 landed; the warehouse stores 3 for partition 0
    publish(kafka, [message(topic, n, key=f"k{n}") for n in range(3, 6)])
    admin = AdminClient(kafka.client_config())
    for done in admin.delete_records([TopicPartition(topic, 0, 5)]).values():
        done.result()  # retention, in effect: offsets 3 and 4 are gone before the sink read them

    stats = drain(config)

    assert stats.received == 0  # record 5 waits behind the gap: nothing is jumped over
    assert rows(warehouse_url, "SELECT _key FROM t ORDER BY 1") == [("k0",), ("k1",), ("k2",)]
    report = json.loads(cli(config, "status", "--json"))
    [stopped] = [p for p in report["partitions"] if p["partition"] == 0]
    assert stopped["stored"] == 3
    assert stopped["stopped"].startswith(f"offsets 3-4 of {topic}[0] were deleted by Kafka (retention)")
    assert f"outboxkit sink skip --topic {topic} --partition 0 --to-offset 5" in stopped["stopped"]

    assert "stored offset 5" in cli(config, "skip", "--topic", topic, "--partition", "0", "--to-offset", "5")
    drain(config)  # the operator accepted the gap: the sink reads on from 5

    assert rows(warehouse_url, "SELECT _key FROM t ORDER BY 1") == [("k0",), ("k1",), ("k2",), ("k5",)]
    [running] = [p for p in json.loads(cli(config, "status", "--json"))["partitions"] if p["partition"] == 0]
    assert (running["stored"], running["stopped"]) == (6, None)


def test_replay_from_an_offset_or_a_time_changes_nothing_already_right(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    publish(kafka, [message(topic, n, key=f"k{n % 3}", event_id=f"e{n}") for n in range(6)])
    tables = [
        TableMapping(topic=topic, table="state"),
        TableMapping(topic=topic, table="log", mode="append"),
        TableMapping(topic=topic, table="versions", mode="history"),
    ]
    config = settings(kafka, warehouse_url, unique_name("g"), tables)
    drain(config)
    snapshot = [
        rows(warehouse_url, f"SELECT * FROM {t} ORDER BY _event_id") for t in ("state", "log", "versions")
    ]

    assert "1 partition(s) rewound" in cli(config, "replay", "--from-offset", "0")
    again = drain(config)
    assert (again.applied, again.skipped) == (0, 18)
    assert "rewound" in cli(config, "replay", "--from-timestamp", "2020-01-01T00:00:00+00:00")
    assert drain(config).skipped == 18

    assert [
        rows(warehouse_url, f"SELECT * FROM {t} ORDER BY _event_id") for t in ("state", "log", "versions")
    ] == snapshot


def test_history_validity_runs_from_each_versions_creation_to_the_next_even_when_published_late(
    kafka: KafkaSettings, source: Source, warehouse_url: str, unique_name: Names
) -> None:
    with Session(source.app, info={SETTINGS_KEY: OutboxSettings(topic_template=source.topic)}) as session:
        thing = Thing(group="k", n=0)
        session.add(thing)
        session.commit()
        for n in (1, 2):  # three versions, written 0.3 s apart
            time.sleep(0.3)
            thing.n = n
            session.commit()
    with source.app.connect() as conn:
        created = conn.scalars(select(outbox_table.c.created_at).order_by(outbox_table.c.aggregateversion))
        written = [at.replace(tzinfo=datetime.UTC) for at in created]  # SQLite's times are UTC
    time.sleep(1)  # the relay was away: the backlog goes out later, in one batch
    assert source.relay().run(lambda: False, drain=True).published == 3
    history = TableMapping(topic=source.topic, table="versions", mode="history")

    drain(settings(kafka, warehouse_url, unique_name("g"), [history]))

    def as_of(at: datetime.datetime) -> list[tuple[Any, ...]]:
        t = at.isoformat()
        valid = f"_valid_from <= '{t}' AND (_valid_to IS NULL OR _valid_to > '{t}')"
        return rows(warehouse_url, f"SELECT n FROM versions WHERE {valid}")

    found = rows(warehouse_url, "SELECT _version, _valid_from, _valid_to FROM versions ORDER BY _version")
    assert [(v, utc(start), utc(end)) for v, start, end in found] == [
        (1, written[0], written[1]),
        (2, written[1], written[2]),
        (3, written[2], None),
    ]
    for n, (start, end) in enumerate(itertools.pairwise([*written, written[2] + datetime.timedelta(1)])):
        assert as_of(start + (end - start) / 2) == [(n,)]


def utc(at: datetime.datetime | None) -> datetime.datetime | None:
    """A warehouse time as UTC (DuckDB hands TIMESTAMPTZ back in the session's zone)."""
    return None if at is None else at.astimezone(datetime.UTC)


def write_thing(source: Source, n: int) -> None:
    """One event of aggregate thing 1 (Kafka key "k"): created with `n`, or updated to it."""
    with Session(source.app, info={SETTINGS_KEY: OutboxSettings(topic_template=source.topic)}) as session:
        thing = session.get(Thing, 1) or Thing(id=1, group="k", n=n)
        thing.n = n
        session.add(thing)
        session.commit()


def relayed(source: Source, kafka: KafkaSettings, signer: Signer | None = None) -> None:
    """Publish what the outbox holds, as the relay does (signing with `signer`, if given)."""
    relay = make_relay(source.app, kafka, source.topic, source.topic + ".ckpt", signer=signer)
    relay.start()
    try:
        relay.run(lambda: False, drain=True)
    finally:
        relay.close()


def forged(
    topic: str, version: int, n: int, *, partition: int = 0, signature: bytes | None = None
) -> Message:
    """What anyone allowed to write to the topic can send: outboxkit's headers, any version."""
    payload = {"state": {"id": 1, "group": "k", "n": n}}
    record = message(topic, 0, key="k", version=version, payload=payload, partition=partition)
    if signature is None:
        return record
    headers = [*(record.headers() or []), (HEADER_SIGNATURE, signature)]
    return message(topic, 0, key="k", payload=payload, partition=partition, headers=headers)


@pytest.mark.parametrize("policy", ["dlq", "stop"])
def test_a_forged_version_far_above_the_stored_one_is_refused_and_genuine_updates_still_apply(
    kafka: KafkaSettings, source: Source, warehouse_url: str, unique_name: Names, policy: str
) -> None:
    config = settings(
        kafka,
        warehouse_url,
        unique_name("g"),
        [TableMapping(topic=source.topic, table="t")],
        poison_policy=policy,
    )
    write_thing(source, 1)
    relayed(source, kafka)
    drain(config)
    [genuine] = committed_records(kafka, source.topic)
    publish(kafka, [forged(source.topic, 1_000_000, 666, partition=genuine.partition)])  # not the relay
    write_thing(source, 2)
    relayed(source, kafka)

    stats = drain(config)

    # dlq: the genuine update applies; stop: it waits behind the forged record. Never the forgery.
    assert rows(warehouse_url, "SELECT _version, n FROM t") == ([(2, 2)] if policy == "dlq" else [(1, 1)])
    [(action, reason)] = rows(warehouse_url, "SELECT action, reason FROM outboxkit_dead_letters")
    assert action == ("dead-letter" if policy == "dlq" else "stopped")
    assert reason.startswith(
        "untrusted record: version 1000000 of key 'k' is 999999 above the version 1 table t holds "
        "(max_version_jump=10000)"
    )
    assert stats.untrusted == 1


KEY_1, KEY_2 = "first-signing-key-of-at-least-32-bytes", "second-signing-key-at-least-32-bytes!"


def test_with_signing_on_unsigned_and_badly_signed_records_are_refused_and_signed_ones_apply(
    kafka: KafkaSettings, source: Source, warehouse_url: str, unique_name: Names
) -> None:
    group, tables = unique_name("g"), [TableMapping(topic=source.topic, table="t")]
    config = settings(kafka, warehouse_url, group, tables, signing_keys={"k1": KEY_1})
    write_thing(source, 1)
    relayed(source, kafka, Signer("k1", KEY_1.encode()))
    drain(config)
    [genuine] = committed_records(kafka, source.topic)
    where = genuine.partition
    tampered = [(n, v.encode()) for n, v in genuine.headers.items()]  # its signature, another value
    publish(
        kafka,
        [
            forged(source.topic, 2, 666, partition=where),  # unsigned: as v2 it would beat the genuine v2
            message(
                source.topic, 0, key="k", payload={"state": {"n": 667}}, partition=where, headers=tampered
            ),
            forged(source.topic, 2, 668, partition=where, signature=b"k9:" + b"0" * 64),
        ],
    )
    write_thing(source, 2)
    relayed(source, kafka, Signer("k1", KEY_1.encode()))
    second = drain(config)

    assert rows(warehouse_url, "SELECT _version, n FROM t") == [(2, 2)]
    assert [
        reason
        for (reason,) in rows(warehouse_url, 'SELECT reason FROM outboxkit_dead_letters ORDER BY "offset"')
    ] == [
        "untrusted record: it carries no outboxkit-signature, and this consumer accepts signed records only",
        "untrusted record: its signature (key id 'k1') does not match its key, value and outboxkit headers",
        "untrusted record: it is signed with key id 'k9', which this consumer does not know (it knows k1): "
        "add that key if the relays use it",
    ]
    assert second.untrusted == 3

    rotating = settings(kafka, warehouse_url, group, tables, signing_keys={"k1": KEY_1, "k2": KEY_2})
    write_thing(source, 3)
    relayed(source, kafka, Signer("k1", KEY_1.encode()))  # relays still on the old key ...
    write_thing(source, 4)
    relayed(source, kafka, Signer("k2", KEY_2.encode()))  # ... and switched to the new one
    third = drain(rotating)

    assert (third.applied, third.untrusted) == (2, 0)
    assert rows(warehouse_url, "SELECT _version, n FROM t") == [(4, 4)]


def test_each_batch_is_a_span_linked_to_the_spans_the_events_were_written_in(
    kafka: KafkaSettings, topic: str, warehouse: Engine, unique_name: Names
) -> None:
    written = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{written}-b7ad6b7169203331-01".encode()
    record = message(topic, 0, key="a")
    publish(
        kafka, [message(topic, 0, key="a", headers=[*(record.headers() or []), ("traceparent", traceparent)])]
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    mappings = [TableMapping(topic=topic, table="t")]
    group = unique_name("g")
    writer = SqlWriter(warehouse, mappings)
    consumer = WarehouseConsumer(kafka, group, [topic], lambda topics: writer.stored_offsets(group, topics))
    sink = Sink(consumer, writer, group, by_topic(mappings), tracer=provider.get_tracer("test"))

    sink.run(lambda: False, drain=True)

    [span] = exporter.get_finished_spans()
    assert span.name == "outboxkit.sink batch"
    assert [format_trace_id(link.context.trace_id) for link in span.links] == [written]


def test_metrics_and_probes_show_progress_dedupe_and_a_stopped_partition(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names, free_port: int
) -> None:
    publish(kafka, [message(topic, 0, key="a"), message(topic, 0, key="a", event_id="dup")])
    publish(kafka, [message(topic, 1, key="a", event_id="dup")])  # the same event again, at a new offset
    config = settings(
        kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")], http_port=free_port
    )
    sink = sink_from_settings(config)
    done = threading.Event()
    thread = threading.Thread(target=sink.run, args=(done.is_set,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: sink.stats.received == 3)
        status, text_ = get(free_port, "/metrics")
        assert status == 200
        assert metric(text_, "outboxkit_sink_applied_total") == 2
        assert metric(text_, "outboxkit_sink_skipped_total") == 1
        assert metric(text_, "outboxkit_sink_lag_records") == 0
        assert get(free_port, "/healthz")[0] == 200
        assert get(free_port, "/readyz")[0] == 200

        publish(kafka, [message(topic, 9, key="b", payload={"n": "x"}, schema_version=3)])
        wait_until(lambda: bool(metric(get(free_port, "/metrics")[1], "outboxkit_sink_stopped_partitions")))
        assert get(free_port, "/readyz")[0] == 503  # an operator must look; the process stays alive
        assert get(free_port, "/healthz")[0] == 200
    finally:
        done.set()
        thread.join(30)


def test_lag_counts_records_left_to_apply_never_the_transaction_markers(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names, free_port: int
) -> None:
    relay = unique_name("tx")  # as the relay publishes: each transaction ends with a commit marker
    publish(kafka, [message(topic, 0, key="a"), message(topic, 1, key="b")], transactional_id=relay)
    publish(kafka, [message(topic, 0, key="c", partition=1)], transactional_id=relay)
    config = settings(
        kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")], poison_policy="stop"
    )
    drain(config)

    def lags() -> tuple[int, dict[int, int]]:
        report = json.loads(cli(config, "status", "--json"))
        return report["lag"], {p["partition"]: p["lag"] for p in report["partitions"]}

    assert lags() == (0, {0: 0, 1: 0})  # applied everything: nothing behind
    publish(kafka, [message(topic, 2, key="d", payload=b"{oops")], transactional_id=relay)
    assert lags() == (1, {0: 1, 1: 0})  # one record left to apply (and its marker, which is none)

    sink = sink_from_settings(config.model_copy(update={"http_port": free_port}))
    done = threading.Event()
    thread = threading.Thread(target=sink.run, args=(done.is_set,), daemon=True)
    thread.start()
    try:  # the record stops partition 0: it is still the one record left to apply
        wait_until(lambda: sink.stats.batches == 1)
        wait_until(lambda: metric(get(free_port, "/metrics")[1], "outboxkit_sink_lag_records") == 1, 10)
        publish(kafka, [message(topic, 1, key="e", partition=1)], transactional_id=relay)
        wait_until(lambda: sink.stats.applied == 1)
        wait_until(lambda: metric(get(free_port, "/metrics")[1], "outboxkit_sink_lag_records") == 1, 10)
    finally:
        done.set()
        thread.join(30)
    assert lags() == (1, {0: 1, 1: 0})


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_value_the_warehouse_refuses_is_found_in_its_batch_and_dead_lettered(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    publish(kafka, [message(topic, n, key=f"k{n}", payload={"n": n}) for n in range(9)])
    publish(kafka, [message(topic, 9, key="huge", payload={"n": 2**63})])  # JSON allows it, BIGINT does not
    publish(kafka, [message(topic, n, key=f"k{n}", payload={"n": n}) for n in range(10, 16)])
    typed = TableMapping(topic=topic, table="t", model=Order)  # n: int, a BIGINT column

    stats = drain(settings(kafka, warehouse_url, unique_name("g"), [typed]))

    assert (stats.applied, stats.dead_letters) == (15, 1)
    assert rows(warehouse_url, "SELECT count(*) FROM t") == [(15,)]
    [(offset, reason)] = rows(warehouse_url, 'SELECT "offset", reason FROM outboxkit_dead_letters')
    assert offset == 9
    assert reason.startswith("the warehouse refused it: ")


def test_fields_that_differ_only_in_case_are_a_dead_letter_at_once_not_a_retried_batch(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    """DuckDB cannot hold `Name` and `name` as two columns: the sink says so when it derives the
    columns, instead of retrying a CREATE TABLE the warehouse will always refuse."""
    publish(
        kafka, [message(topic, 0, key="a", payload={"Name": "x", "name": "y"}), message(topic, 1, key="b")]
    )

    stats = drain(settings(kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")]))

    assert (stats.applied, stats.dead_letters, stats.retries) == (1, 1, 0)
    [(reason,)] = rows(warehouse_url, "SELECT reason FROM outboxkit_dead_letters")
    assert reason.startswith("field 'name' differs from field 'Name' only in case")


def test_a_replay_reaches_a_running_sink_at_its_next_batch(
    kafka: KafkaSettings, topic: str, warehouse_url: str, unique_name: Names
) -> None:
    publish(kafka, [message(topic, n, key=f"k{n}") for n in range(5)])
    config = settings(kafka, warehouse_url, unique_name("g"), [TableMapping(topic=topic, table="t")])
    sink = sink_from_settings(config)
    done = threading.Event()
    thread = threading.Thread(target=sink.run, args=(done.is_set,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: sink.stats.applied == 5)
        replay(config, from_offset=0)
        publish(kafka, [message(topic, 5, key="k5")])
        wait_until(lambda: sink.stats.applied == 6)
        wait_until(lambda: sink.stats.skipped == 5)  # everything again, from the rewound offset
    finally:
        done.set()
        thread.join(30)
    assert sink.stats.moved == 1
    assert rows(warehouse_url, "SELECT count(*) FROM t") == [(6,)]


def test_a_partition_that_moves_while_a_refused_value_is_isolated_loses_nothing(
    kafka: KafkaSettings, topic: str, warehouse: Engine, unique_name: Names
) -> None:
    """Halving a batch to find a refused value, the first half finds that another instance
    moved the partition: the rest must be re-read from the warehouse offsets, not settled."""
    records = [message(topic, n, key=f"k{n}") for n in range(8)] + [
        message(topic, 8, key="huge", payload={"n": 2**63})
    ]
    publish(kafka, records)
    mappings, group = [TableMapping(topic=topic, table="t", model=Order)], unique_name("g")  # n: BIGINT
    writer = SqlWriter(warehouse, mappings)
    other = Settle(warehouse, mappings, group=group)  # the instance that takes the partition meanwhile
    real_write, moved = writer.write, []

    def write(group_id: str, batch: Batch) -> Outcome:
        try:
            return real_write(group_id, batch)
        except WarehouseError as exc:
            if exc.data and not moved:
                moved.append(other(*records[:2]))  # it commits offsets 0 and 1
            raise

    writer.write = write  # type: ignore[method-assign]
    consumer = WarehouseConsumer(kafka, group, [topic], lambda topics: writer.stored_offsets(group, topics))
    stats = Sink(consumer, writer, group, by_topic(mappings)).run(lambda: False, drain=True)

    assert moved
    assert stats.moved == 1
    with warehouse.connect() as conn:
        keys = sorted(conn.execute(text("SELECT _key FROM t")).scalars())
    assert keys == sorted(f"k{n}" for n in range(8))
    assert writer.stored_offsets(group, [topic]) == {(topic, 0): 9}
