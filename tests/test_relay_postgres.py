"""The relay on PostgreSQL beyond capture: dead letters, cleanup, spans, a database gone away.

What capture itself guarantees (gap-free, commit order, multi-row writes, crashes) is the capture
contract suite, `test_capture_contract.py`, run against every capture source. The outcome is read
from Kafka by an independent read_committed consumer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, create_engine, make_url, select, update
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from outbox.table import dead_letters_table
from relay import Relay, RelayService, RelaySettings, SoleLease
from relay.capture import Position, PostgresCapture
from relay.errors import CaptureError
from relay.service import Cleanup
from relay.status import relay_status
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings
from tests.conftest import PgSchema
from tests.helpers import committed_records, make_relay
from tests.models import Base, Thing


@dataclass
class PgSource:
    app: Engine
    topic: str
    relay: Relay

    def session(self) -> Session:
        return Session(self.app, info={SETTINGS_KEY: OutboxSettings(topic_template=self.topic)})

    def publish_all(self) -> int:
        """Run the relay until the outbox is drained; return how many events it published."""
        before = self.relay.stats.published
        return self.relay.run(lambda: False, drain=True).published - before


@pytest.fixture
def pg_source(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> Iterator[PgSource]:
    app = create_engine(pg_schema.url, connect_args=pg_schema.connect_args, pool_size=4)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    relay = make_relay(app, kafka, unique_name("src"), unique_name("ckpt"), batch_size=1)
    relay.start()
    yield PgSource(app, new_topic(), relay)
    app.dispose()


def test_a_row_whose_headers_kafka_cannot_carry_becomes_a_dead_letter_and_the_rest_flows(
    kafka: KafkaSettings, pg_source: PgSource
) -> None:
    with pg_source.session() as session:
        session.add_all(Thing(id=n, group=f"g{n}", n=n) for n in range(3))
        session.commit()
    with pg_source.app.begin() as conn:  # written around outboxkit
        conn.execute(
            update(outbox.outbox_table).where(outbox.outbox_table.c.aggregateid == "g1").values(headers="{")
        )
    assert pg_source.publish_all() == 2
    assert [r.value["state"]["n"] for r in committed_records(kafka, pg_source.topic)] == [0, 2]
    assert pg_source.relay.stats.dead_letters == 1
    with pg_source.app.connect() as conn:
        dead = conn.execute(select(dead_letters_table)).one()
        left = conn.execute(select(outbox.outbox_table.c.aggregateid)).scalars().all()
    assert (dead.aggregateid, dead.headers) == ("g1", "{")  # moved as it was, for an operator to fix
    assert "not JSON" in dead.reason
    assert "publish it again" in dead.reason
    assert "g1" not in left


def test_a_row_kafka_refuses_for_good_becomes_a_dead_letter_with_its_reason_and_the_rest_flows(
    kafka: KafkaSettings, pg_source: PgSource, pg_schema: PgSchema, unique_name: Callable[[str], str]
) -> None:
    pg_source.topic = unique_name("small")
    ensure_topic(
        kafka, pg_source.topic, config={"max.message.bytes": "4000"}
    )  # a topic stricter than the app
    with pg_source.session() as session:
        for n in range(5):
            session.add(Thing(id=n, group="k", n=n, note="x" * 20_000 if n == 2 else None))
        session.commit()

    source, checkpoints = unique_name("src"), unique_name("ckpt")
    pg_source.relay = make_relay(pg_source.app, kafka, source, checkpoints)
    pg_source.relay.start()
    assert pg_source.publish_all() == 4

    assert [r.value["state"]["n"] for r in committed_records(kafka, pg_source.topic)] == [0, 1, 3, 4]
    assert pg_source.relay.stats.dead_letters == 1
    with pg_source.app.connect() as conn:
        dead_letter = conn.execute(select(dead_letters_table)).one()
        left = conn.execute(select(outbox.outbox_table.c.id)).scalars().all()
    assert json.loads(dead_letter.payload)["state"]["n"] == 2  # kept whole, for an operator to act on
    assert "MSG_SIZE_TOO_LARGE" in dead_letter.reason or "too large" in dead_letter.reason.lower()
    assert dead_letter.id not in left

    url = (
        make_url(pg_schema.url)
        .update_query_dict(pg_schema.connect_args)
        .render_as_string(hide_password=False)
    )
    seen = relay_status(
        RelaySettings(database_url=url, source_id=source, checkpoint_topic=checkpoints, kafka=kafka)
    )
    assert (seen.dead_letters, seen.backlog) == (1, 0)
    assert f"dead letter #{dead_letter.id} ThingCreated" in seen.render()
    assert dead_letter.reason in seen.render()


def outbox_ids(app: Engine) -> list[int]:
    with app.connect() as conn:
        return list(
            conn.execute(select(outbox.outbox_table.c.id).order_by(outbox.outbox_table.c.id)).scalars()
        )


def cleaned_up(app: Engine, publish_and_clean: Callable[[], None], cap: float = 120) -> None:
    """Run the relay until cleanup has emptied the outbox. A row is deleted once a snapshot taken
    after it saw no older transaction running — in the whole cluster, so another database's open
    transaction (a busy machine, a test nearby) may hold it back for a while: waited for, capped."""
    deadline = time.monotonic() + cap
    while True:
        publish_and_clean()
        left = outbox_ids(app)
        if not left:
            return
        assert time.monotonic() < deadline, f"published rows {left} still in the outbox after {cap} s"
        time.sleep(0.2)


def test_cleanup_deletes_published_rows_only_and_keeps_them_for_the_retention(
    kafka: KafkaSettings, pg_source: PgSource
) -> None:
    def publish_and_clean(retention: float = 0.0) -> None:
        service = RelayService(
            SoleLease(), lambda _: pg_source.relay, poll_interval=0.01, cleanup=Cleanup(retention=retention)
        )
        service.run(lambda: False, drain=True)

    with pg_source.session() as kept:
        kept.add(Thing(id=1, group="a", n=1))
        kept.commit()
    publish_and_clean(retention=3600)
    assert outbox_ids(pg_source.app) == [1]  # published, but younger than the hour it is kept for
    cleaned_up(pg_source.app, publish_and_clean)

    with pg_source.session() as open_one:
        open_one.add(Thing(id=2, group="b", n=2))
        open_one.flush()  # stays open while 3 commits
        with pg_source.session() as other:
            other.add(Thing(id=3, group="c", n=3))
            other.commit()
        publish_and_clean()
        # 3 is published, but deleted only once every older transaction has ended: cleanup works
        # below the xmin of a snapshot that was published in full.
        assert outbox_ids(pg_source.app) == [3]
        open_one.commit()
    cleaned_up(pg_source.app, publish_and_clean)  # a later run's base snapshot sees the earlier run's delta
    assert [r.value["state"]["n"] for r in committed_records(kafka, pg_source.topic)] == [1, 3, 2]


def test_each_batch_is_a_producer_span_linked_to_the_spans_its_events_were_written_in(
    kafka: KafkaSettings, pg_source: PgSource, unique_name: Callable[[str], str]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app_tracer = provider.get_tracer("the app")
    written = []
    for n in range(3):
        with app_tracer.start_as_current_span(f"request {n}") as span, pg_source.session() as session:
            session.add(Thing(id=n, group="k", n=n))
            session.commit()
            written.append(span.get_span_context())

    relay = make_relay(
        pg_source.app, kafka, unique_name("src"), unique_name("ckpt"), tracer=provider.get_tracer("r")
    )
    relay.start()
    relay.step()

    [batch] = [span for span in exporter.get_finished_spans() if span.name == "outboxkit.relay publish"]
    assert batch.kind == SpanKind.PRODUCER
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 3
    linked = [(link.context.trace_id, link.context.span_id) for link in batch.links]
    assert linked == [(context.trace_id, context.span_id) for context in written]


def test_a_database_gone_away_is_a_capture_error_the_relay_retries_never_a_crash() -> None:
    # Found by chaos: a relay died when PostgreSQL restarted just as it took a new snapshot.
    gone = create_engine("postgresql+psycopg://outboxkit@127.0.0.1:1/outboxkit")
    capture = PostgresCapture(gone)
    try:
        for call in (
            lambda: capture.fetch(Position(), 10),
            lambda: capture.fetch(Position(base="1:1:", target="1:1:"), 10),
            lambda: capture.backlog(Position()),
            lambda: capture.delete_published(Position(base="1:1:"), 10, None),
        ):
            with pytest.raises(CaptureError, match="outbox"):
                call()
    finally:
        gone.dispose()
