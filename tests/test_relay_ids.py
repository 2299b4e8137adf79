"""Outbox ids are never handed out twice, and a row the checkpoint claims but never published stops
the relay instead of being skipped, and stays in the outbox.

The relay's checkpoint says "published up to id N" (on PostgreSQL: up to a snapshot). An outbox that
hands out an id at or below N again — SQLite without AUTOINCREMENT once cleanup emptied it, a table
recreated, a database restored from a backup — would have its new rows skipped as published, and
then deleted by cleanup. Real SQLite files, real PostgreSQL and the real broker throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text

import outbox
from outbox import outbox_table, schema
from relay import Checkpoints, Position, PostgresCapture, Relay, RelaySettings, TransactionalPublisher
from relay.capture import envelope_of
from relay.errors import UnsafeOutboxError
from relay.run import transactional_id
from relay.status import relay_status
from runtime.kafka import KafkaSettings
from tests.conftest import PgSchema, Source
from tests.helpers import committed_event_ids, emit, make_relay
from tests.models import Base

Names = Callable[[str], str]


def outbox_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(outbox_table.c.id).order_by(outbox_table.c.id)).scalars())


def drain(relay: Relay) -> int:
    """Run the relay until the outbox is drained; return how many events it published now."""
    before = relay.stats.published
    return relay.run(lambda: False, drain=True).published - before


def test_events_written_after_cleanup_emptied_the_outbox_are_published(
    kafka: KafkaSettings, source: Source
) -> None:
    first = emit(source.app, source.topic, 1)
    relay = source.relay()
    assert drain(relay) == 1
    assert relay.delete_published(100, None) == 1
    assert outbox_ids(source.app) == []  # the app went idle: cleanup emptied the outbox

    later = emit(source.app, source.topic, 1)
    assert outbox_ids(source.app) == [2]  # never id 1 again
    assert drain(relay) == 1
    relay.close()
    assert drain(source.relay()) == 0  # and a restart agrees

    assert committed_event_ids(kafka, source.topic) == first + later


@pytest.fixture
def pre_fix_app(tmp_path: Path) -> Engine:
    """An app database whose outbox came from outboxkit's migrations before ids were made unique."""
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    schema.upgrade(engine, "0003")
    Base.metadata.create_all(engine)
    return engine


def publish_as_the_old_relay(app: Engine, kafka: KafkaSettings, source_id: str, checkpoints: str) -> None:
    """What the relay before the fix did to a pre-fix outbox: publish every row with the checkpoint
    in one Kafka transaction, and let cleanup delete them (which left the table empty)."""
    with app.connect() as conn:
        rows = conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all()
    publisher = TransactionalPublisher(kafka, transactional_id(source_id))
    publisher.start()
    checkpoint = Checkpoints(kafka, checkpoints, source_id)
    checkpoint.ensure_topic()
    publisher.publish([envelope_of(row) for row in rows], checkpoint.record(Position(after_id=rows[-1].id)))
    publisher.close()
    with app.begin() as conn:
        conn.execute(outbox_table.delete())


def test_a_pre_fix_sqlite_outbox_emptied_by_cleanup_is_migrated_and_no_published_id_comes_back(
    kafka: KafkaSettings, pre_fix_app: Engine, new_topic: Callable[..., str], unique_name: Names
) -> None:
    topic, source_id, checkpoints = new_topic(), unique_name("src"), unique_name("ckpt")
    published = emit(pre_fix_app, topic, 3)
    publish_as_the_old_relay(pre_fix_app, kafka, source_id, checkpoints)

    schema.upgrade(pre_fix_app)  # `outboxkit migrate`
    later = emit(pre_fix_app, topic, 1)
    assert outbox_ids(pre_fix_app)[0] > 3  # above every id the old table handed out

    relay = make_relay(pre_fix_app, kafka, source_id, checkpoints)
    relay.start()
    assert drain(relay) == 1
    assert committed_event_ids(kafka, topic) == published + later


def test_rows_the_pre_fix_table_gave_reused_ids_are_renumbered_by_the_migration_and_published(
    kafka: KafkaSettings, pre_fix_app: Engine, new_topic: Callable[..., str], unique_name: Names
) -> None:
    """Still in the outbox when `migrate` runs, events whose ids came back (at or below the old
    relay's checkpoint) would be skipped and then deleted as published: they move above every id
    ever handed out instead, in their order, and reach Kafka."""
    topic, source_id, checkpoints = new_topic(), unique_name("src"), unique_name("ckpt")
    published = emit(pre_fix_app, topic, 3)
    publish_as_the_old_relay(pre_fix_app, kafka, source_id, checkpoints)  # checkpoint: id 3
    reused = emit(pre_fix_app, topic, 2)
    assert outbox_ids(pre_fix_app) == [1, 2]  # the old bug: below the checkpoint

    schema.upgrade(pre_fix_app)  # `outboxkit migrate`
    assert outbox_ids(pre_fix_app) == [6, 7]  # above the 5 rows ever written, in the same order

    relay = make_relay(pre_fix_app, kafka, source_id, checkpoints)
    relay.start()
    assert drain(relay) == 2
    assert committed_event_ids(kafka, topic) == published + reused


def test_a_pre_fix_outbox_made_by_create_all_is_recreated_and_published_under_a_new_source_id(
    kafka: KafkaSettings, pre_fix_app: Engine, new_topic: Callable[..., str], unique_name: Names
) -> None:
    """The README's way for an outbox `migrate` cannot upgrade: the recreated table's ids start at
    1 again, so the old source refuses them and a new source publishes them, once."""
    topic, source_id, checkpoints = new_topic(), unique_name("src"), unique_name("ckpt")
    published = emit(pre_fix_app, topic, 3)
    publish_as_the_old_relay(pre_fix_app, kafka, source_id, checkpoints)
    outbox_table.drop(pre_fix_app)
    outbox_table.create(pre_fix_app)
    later = emit(pre_fix_app, topic, 1)

    old_source = make_relay(pre_fix_app, kafka, source_id, checkpoints)
    old_source.start()
    with pytest.raises(UnsafeOutboxError, match="id counter is at 1, behind it"):
        old_source.step()
    old_source.close()
    new_source = make_relay(pre_fix_app, kafka, unique_name("src"), checkpoints)
    new_source.start()
    assert drain(new_source) == 1
    assert committed_event_ids(kafka, topic) == published + later


def test_migrating_a_pre_fix_sqlite_outbox_keeps_its_waiting_rows_as_they_were(
    kafka: KafkaSettings, pre_fix_app: Engine, new_topic: Callable[..., str], unique_name: Names
) -> None:
    topic = new_topic()
    waiting = emit(pre_fix_app, topic, 3)
    with pre_fix_app.connect() as conn:
        before = conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all()

    schema.upgrade(pre_fix_app)
    with pre_fix_app.connect() as conn:
        assert conn.execute(select(outbox_table).order_by(outbox_table.c.id)).all() == before

    relay = make_relay(pre_fix_app, kafka, unique_name("src"), unique_name("ckpt"))
    relay.start()
    assert drain(relay) == 3
    assert relay.delete_published(100, None) == 3
    later = emit(pre_fix_app, topic, 1)
    assert outbox_ids(pre_fix_app) == [4]
    assert drain(relay) == 1
    assert committed_event_ids(kafka, topic) == waiting + later


def test_the_relay_refuses_an_sqlite_outbox_that_would_hand_its_ids_out_again(
    kafka: KafkaSettings, pre_fix_app: Engine, new_topic: Callable[..., str], unique_name: Names
) -> None:
    emit(pre_fix_app, new_topic(), 1)
    relay = make_relay(pre_fix_app, kafka, unique_name("src"), unique_name("ckpt"))
    relay.start()
    with pytest.raises(UnsafeOutboxError, match=r"without AUTOINCREMENT.*outboxkit migrate"):
        relay.step()
    relay.close()


@pytest.mark.parametrize("published", [1, 2], ids=["the-checkpoint-id-again", "an-id-counter-behind"])
def test_a_row_at_or_below_the_checkpoint_never_published_stops_the_relay_is_kept_and_shown(
    kafka: KafkaSettings, tmp_path: Path, new_topic: Callable[..., str], unique_name: Names, published: int
) -> None:
    url, topic = f"sqlite:///{tmp_path / 'app.db'}", new_topic()
    settings = RelaySettings(
        database_url=url, source_id=unique_name("src"), checkpoint_topic=unique_name("ckpt"), kafka=kafka
    )
    app = create_engine(url)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    in_kafka = emit(app, topic, published)
    relay = make_relay(app, kafka, settings.source_id, settings.checkpoint_topic)
    relay.start()
    assert drain(relay) == published
    assert relay.delete_published(100, None) == published
    outbox_table.drop(app)  # the table recreated (or the database restored from an old backup)...
    outbox_table.create(app)
    emit(app, topic, 1)  # ...hands out id 1 again

    with pytest.raises(UnsafeOutboxError, match=rf"outbox row 1 .*checkpoint \(id {published}\)"):
        relay.step()
    with pytest.raises(UnsafeOutboxError):
        relay.delete_published(100, None)
    relay.close()
    assert outbox_ids(app) == [1]  # kept, for the operator to publish
    assert committed_event_ids(kafka, topic) == in_kafka

    status = relay_status(settings).render()
    assert "STOPPED" in status
    assert "outbox row 1 is at or below the relay's checkpoint" in status


def test_status_of_an_sqlite_outbox_with_waiting_rows_says_how_old_the_oldest_is(
    tmp_path: Path, new_topic: Callable[..., str], unique_name: Names, kafka: KafkaSettings
) -> None:
    """SQLite hands `created_at` back without its UTC offset: status and the age metric must still
    read it as UTC (they failed with "can't subtract offset-naive and offset-aware datetimes")."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    settings = RelaySettings(
        database_url=url, source_id=unique_name("src"), checkpoint_topic=unique_name("ckpt"), kafka=kafka
    )
    app = create_engine(url)
    schema.upgrade(app)
    Base.metadata.create_all(app)
    emit(app, new_topic(), 2)

    status = relay_status(settings)
    (shard,) = status.shards
    assert shard.oldest_unpublished is not None
    assert shard.oldest_unpublished.tzinfo is not None
    assert "2 waiting, oldest " in status.render()


def test_a_postgresql_database_behind_the_checkpoint_stops_capture_and_keeps_its_rows(
    pg_engine: Engine, new_topic: Callable[..., str]
) -> None:
    """A database restored from a backup hands out transaction ids the checkpoint's snapshots count as
    committed already: its new rows would be skipped as published, and deleted as such."""
    outbox.metadata.create_all(pg_engine)
    Base.metadata.create_all(pg_engine)
    emit(pg_engine, new_topic(), 1)
    with pg_engine.connect() as conn:
        now = int(conn.execute(text("select pg_snapshot_xmax(pg_current_snapshot())::text")).scalar_one())
    later = f"{now + 1000}:{now + 1000}:"  # a checkpoint taken after this database's present
    capture = PostgresCapture(pg_engine)

    for position in (Position(base=later, target=later), Position(after_id=5, base="1:1:", target=later)):
        with pytest.raises(UnsafeOutboxError, match="behind the relay's checkpoint"):
            PostgresCapture(pg_engine).fetch(position, 10)
        with pytest.raises(UnsafeOutboxError):
            capture.delete_published(position, 100, None)
    assert outbox_ids(pg_engine) == [1]


def test_a_postgresql_id_sequence_restarted_after_cleanup_loses_nothing(
    kafka: KafkaSettings, pg_schema: PgSchema, new_topic: Callable[..., str], unique_name: Names
) -> None:
    """Capture orders by id only inside one snapshot delta, so ids handed out again land in a later
    delta and are published."""
    app = create_engine(pg_schema.url, connect_args=pg_schema.connect_args)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    topic = new_topic()
    relay = make_relay(app, kafka, unique_name("src"), unique_name("ckpt"))
    relay.start()
    first = emit(app, topic, 2)
    assert drain(relay) == 2
    with app.begin() as conn:  # cleanup's doing (which other sessions' open transactions may delay)
        conn.execute(outbox_table.delete())
        conn.execute(text("alter sequence outbox_id_seq restart"))
    later = emit(app, topic, 1)
    assert outbox_ids(app) == [1]
    assert drain(relay) == 1
    relay.close()
    assert committed_event_ids(kafka, topic) == first + later
    app.dispose()
