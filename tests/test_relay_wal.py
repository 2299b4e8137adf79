"""WAL capture (`relay.capture.wal`) on the real PostgreSQL and Kafka: exactly once, in commit order.

The cases that break LSN-as-cursor capture: several rows at one LSN (multi-row INSERT, COPY),
transactions interleaved in the log, a batch ending inside a transaction, a restart between the
Kafka commit and the slot's confirmation. Outcomes are read by an independent read_committed
consumer. Every relay's slot and publication is dropped at the end (a slot left behind pins WAL).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

import psycopg
import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from outbox.table import MESSAGE_PREFIX
from relay import Relay, RelayService, RelaySettings, SoleLease
from relay.capture import CapturedRow, CaptureSource, Position
from relay.capture import wal as wal_capture
from relay.capture.rows import WIRE
from relay.capture.wal import WalCapture, drop_slot, slot_name
from relay.checkpoint import Checkpoints
from relay.dead_letters import DeadLetters
from relay.errors import CaptureError, ConfigError, PublishAbortedError, UnsafeOutboxError
from relay.publisher import TransactionalPublisher
from relay.run import transactional_id
from relay.shards import Shard
from relay.topics import ensure_topic
from runtime.kafka import KafkaSettings
from tests.conftest import PgSchema
from tests.helpers import committed_event_ids, committed_records
from tests.models import Base, Thing, ThingFlagged
from tests.processes import stopping
from wire import shard_key

_COLUMNS = "event_id, aggregatetype, aggregateid, aggregateversion, type, topic, key, payload, shard_key"


@dataclass
class WalSource:
    """One PostgreSQL outbox, its topic, and relays for it in `wal` mode (all one source id)."""

    app: Engine
    kafka: KafkaSettings
    topic: str
    source_id: str
    checkpoints: str
    relays: list[Relay] = field(default_factory=list)

    def relay(self, batch_size: int = 500, *, confirming: bool = True, cleanup: bool = True) -> Relay:
        """A started relay; with `confirming=False`, one that dies before each slot confirmation
        (its Kafka transactions commit, the slot never hears of them)."""
        relay = Relay.for_shard(
            self.app,
            self.kafka,
            self.source_id,
            self.checkpoints,
            batch_size=batch_size,
            capture="wal",
            cleanup=cleanup,
        )
        if not confirming:
            relay = Relay(
                _Unconfirmed(WalCapture(self.app, self.source_id)),
                TransactionalPublisher(self.kafka, transactional_id(self.source_id)),
                Checkpoints(self.kafka, self.checkpoints, self.source_id),
                DeadLetters(self.app),
                batch_size=batch_size,
            )
        self.relays.append(relay)
        relay.start()
        return relay

    def rows(self, tag: str, count: int) -> list[tuple[object, ...]]:
        """`count` outbox rows as raw SQL writes them (no `xid`), event ids `tag-0`, `tag-1`...;
        row n in shard n % 2 (of two)."""
        return [(f"{tag}-{n}", "thing", tag, n + 1, "raw", self.topic, tag, "{}", n) for n in range(count)]

    def insert(self, conn: psycopg.Connection[tuple[object, ...]], tag: str, count: int) -> list[str]:
        """One multi-row INSERT statement: its rows share one transaction and one commit LSN."""
        found = self.rows(tag, count)
        values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s)"] * count)
        conn.execute(f"insert into outbox ({_COLUMNS}) values {values}", [v for row in found for v in row])  # type: ignore[arg-type]
        return [str(row[0]) for row in found]

    def published(self) -> list[str]:
        return committed_event_ids(self.kafka, self.topic)


class _Unconfirmed:
    """A capture source whose relay dies between the Kafka commit and the slot's confirmation."""

    def __init__(self, inner: CaptureSource) -> None:
        self._inner = inner
        self.fetch, self.backlog, self.check = inner.fetch, inner.backlog, inner.check
        self.delete_published, self.close = inner.delete_published, inner.close
        self.dead_lettered, self.wakeup_fd = inner.dead_lettered, inner.wakeup_fd

    def published(self, position: Position) -> None:
        """Never reached: the process died right after the Kafka commit."""


@pytest.fixture
def wal(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> Iterator[WalSource]:
    app = create_engine(pg_schema.url, connect_args=pg_schema.connect_args, pool_size=4)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    source = WalSource(app, kafka, new_topic(), unique_name("src"), unique_name("ckpt"))
    yield source
    for relay in source.relays:
        relay.close()
    drop_slot(app, source.source_id)
    app.dispose()


def raw_connection(schema: PgSchema) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        schema.url.replace("postgresql+psycopg", "postgresql"), options=f"-csearch_path={schema.name}"
    )


def publish(relay: Relay, count: int) -> None:
    """Step until `count` more events are published (the log may deliver a commit a moment later)."""
    target, idle = relay.stats.published + count, 0
    while relay.stats.published < target and idle < 400:
        try:
            idle = 0 if relay.step() else idle + 1
        except (
            PublishAbortedError
        ):  # nothing of it visible: retried from the same position, as the service does
            idle += 1
    assert relay.stats.published == target


def test_orm_events_are_published_once_in_commit_order_not_first_write_order(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay = wal.relay()
    settings = {SETTINGS_KEY: OutboxSettings(topic_template=wal.topic)}
    with Session(wal.app, info=settings) as first, Session(wal.app, info=settings) as second:
        first.add(Thing(id=1, group="a", n=1))
        first.flush()  # first write, first LSN, and the transaction stays open...
        second.add_all([Thing(id=2, group="b", n=2), Thing(id=3, group="b", n=3)])
        second.commit()  # ...while the second commits before it
        first.add(Thing(id=4, group="a", n=4))
        first.commit()
    publish(relay, 4)
    with wal.app.connect() as conn:
        ids = dict(
            conn.execute(text("select aggregateid || '/' || aggregateversion, event_id from outbox")).all()
        )
    assert wal.published() == [ids["b/1"], ids["b/2"], ids["a/1"], ids["a/2"]]


def test_a_multi_row_insert_and_a_copy_in_one_transaction_in_batches_smaller_than_it(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay = wal.relay(batch_size=2)
    with raw_connection(pg_schema) as conn:
        expected = wal.insert(conn, "ins", 3)
        with conn.cursor().copy(f"copy outbox ({_COLUMNS}) from stdin") as copy:
            for row in wal.rows("copy", 3):
                copy.write_row(row)
        expected += [f"copy-{n}" for n in range(3)]
    publish(relay, 6)
    assert wal.published() == expected
    assert relay.stats.transactions == 3  # 2 + 2 + 2: batches ended inside the transaction


def test_rows_written_with_raw_sql_without_xid_are_captured(wal: WalSource, pg_schema: PgSchema) -> None:
    relay = wal.relay()
    with raw_connection(pg_schema) as conn:
        expected = wal.insert(conn, "raw", 2)
    with wal.app.connect() as conn:
        assert conn.execute(text("select count(*) from outbox where xid is null")).scalar() == 2
    publish(relay, 2)
    assert wal.published() == expected


def restart_after_three(first: Relay, wal: WalSource, expected: list[str]) -> None:
    """`first` publishes 3 events of a bigger transaction and stops; its successor skips exactly
    those 3 of the transaction the slot re-sends whole, and publishes the rest once."""
    publish(first, 3)
    first.close()  # confirmed up to the big transaction's commit: the slot re-sends all of it
    second = wal.relay(batch_size=3)
    assert second.stats.position.index == 3
    publish(second, len(expected) - 3)
    assert wal.published() == expected


def test_a_restart_after_a_batch_that_ended_inside_a_transaction_skips_exactly_what_was_published(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    first = wal.relay(batch_size=3)
    with raw_connection(pg_schema) as conn:
        expected = wal.insert(conn, "big", 10)  # ten rows at one commit LSN
    with raw_connection(pg_schema) as conn:
        expected += wal.insert(conn, "next", 2)
    restart_after_three(first, wal, expected)


def test_a_relay_dead_before_the_slot_was_confirmed_is_resent_and_nothing_published_twice(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    dying = wal.relay(batch_size=2, confirming=False)
    expected = []
    for tag in ("t1", "t2", "t3"):
        with raw_connection(pg_schema) as conn:
            expected += wal.insert(conn, tag, 3)
    publish(dying, 4)  # at least 4: the last batch ends inside t2 (or at its end, if t1 came alone)
    dying.close()  # its Kafka transactions committed; the slot was never confirmed
    assert confirmed_lsn(wal) < (dying.stats.position.lsn or 0)
    successor = wal.relay(batch_size=2)
    publish(successor, len(expected) - dying.stats.published)  # the slot re-sent t1 and t2 whole
    assert wal.published() == expected


def test_a_drain_goes_on_while_the_log_is_still_being_decoded_and_stops_once_caught_up(
    wal: WalSource, pg_schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = wal.relay()
    monkeypatch.setattr(wal_capture, "CATCH_UP_SECONDS", 0.0)  # every fetch runs out of time at once
    with raw_connection(pg_schema) as conn:  # WAL the slot must decode before the rows behind it
        conn.execute(
            "create table filler as select n, repeat('x', 200) as pad from generate_series(1, 20000) n"
        )
    with raw_connection(pg_schema) as conn:
        expected = wal.insert(conn, "behind", 3)
    relay.run(lambda: False, drain=True)  # empty fetches out of time are not "caught up"
    assert wal.published() == expected


def confirmed_lsn(wal: WalSource) -> int:
    with wal.app.connect() as conn:
        found = conn.execute(
            text(
                "select (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint from pg_replication_slots "
                "where slot_name = :slot"
            ),
            {"slot": slot_name(wal.source_id)},
        ).scalar()
    return int(found)


def test_the_slot_is_confirmed_up_to_what_kafka_committed(wal: WalSource, pg_schema: PgSchema) -> None:
    relay = wal.relay(batch_size=2)
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 3)
    publish(relay, 2)
    position = relay.stats.position
    for _ in range(200):  # the walsender applies the feedback a moment after it was sent
        if confirmed_lsn(wal) == position.lsn:
            break
    assert confirmed_lsn(wal) == position.lsn  # that transaction is re-sent on restart, not skipped


def test_a_row_kafka_refuses_for_good_becomes_a_dead_letter_and_the_rest_flows(
    wal: WalSource, pg_schema: PgSchema, unique_name: Callable[[str], str]
) -> None:
    wal.topic = unique_name("small")
    ensure_topic(wal.kafka, wal.topic, config={"max.message.bytes": "4000"})
    relay = wal.relay()
    with raw_connection(pg_schema) as conn:
        rows = wal.rows("t", 3)
        rows[1] = (*rows[1][:7], "x" * 20_000, rows[1][8])  # larger than the topic takes
        with conn.cursor().copy(f"copy outbox ({_COLUMNS}) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
    publish(relay, 2)
    assert relay.stats.dead_letters == 1
    assert wal.published() == ["t-0", "t-2"]
    with wal.app.connect() as conn:
        assert conn.execute(text("select event_id from outbox_dead_letters")).scalars().all() == ["t-1"]


@pytest.mark.parametrize(
    ("headers", "why"),
    [("not json", "not JSON"), ('["a"]', "a JSON list"), ('{"n": 1}', "not strings: the value(s) of n")],
    ids=["not-json", "not-an-object", "not-strings"],
)
def test_a_row_whose_headers_kafka_cannot_carry_becomes_a_dead_letter_and_the_rest_flows(
    wal: WalSource, pg_schema: PgSchema, headers: str, why: str
) -> None:
    relay = wal.relay()
    with raw_connection(pg_schema) as conn:
        rows = [(*row, "{}") for row in wal.rows("t", 3)]
        rows[1] = (*rows[1][:-1], headers)  # written around outboxkit
        with conn.cursor().copy(f"copy outbox ({_COLUMNS}, headers) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
    publish(relay, 2)
    assert wal.published() == ["t-0", "t-2"]
    assert relay.stats.dead_letters == 1
    with wal.app.connect() as conn:
        dead = conn.execute(text("select event_id, headers, reason from outbox_dead_letters")).one()
    assert (dead.event_id, dead.headers) == ("t-1", headers)  # kept as written, for an operator to fix
    assert why in dead.reason
    assert "publish it again" in dead.reason


def test_with_cleanup_off_a_relay_remembers_no_published_row_for_it(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay = wal.relay(batch_size=2, cleanup=False)  # OUTBOXKIT_RELAY_CLEANUP=false
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 3)
    publish(relay, 3)
    relay.step()  # past the checkpoint of the last batch: what cleanup would have been given
    assert relay.delete_published(100, None) == 0  # nothing kept to delete, so nothing piles up
    with wal.app.connect() as conn:
        assert conn.execute(text("select event_id from outbox")).scalars().all() == ["t-0", "t-1", "t-2"]


def test_cleanup_deletes_the_published_rows_and_keeps_the_rest(wal: WalSource, pg_schema: PgSchema) -> None:
    relay = wal.relay(batch_size=2)
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 3)
    publish(relay, 2)
    assert relay.delete_published(100, None) == 2
    with wal.app.connect() as conn:
        assert conn.execute(text("select event_id from outbox")).scalars().all() == ["t-2"]


def test_shards_split_the_outbox_by_publication_row_filters(wal: WalSource, pg_schema: PgSchema) -> None:
    shards = [WalCapture(wal.app, wal.source_id, Shard(i, 2)) for i in range(2)]
    try:
        with raw_connection(pg_schema) as conn:
            wal.insert(conn, "t", 5)
        seen = [[row.envelope.event_id for row in _drain(capture, 3 - i)] for i, capture in enumerate(shards)]
    finally:
        for i, capture in enumerate(shards):
            capture.close()
            drop_slot(wal.app, wal.source_id, Shard(i, 2))
    assert seen == [["t-0", "t-2", "t-4"], ["t-1", "t-3"]]


def _drain(capture: WalCapture, count: int) -> list[CapturedRow]:
    """What the capture hands out until `count` rows arrived (or the log stayed quiet long)."""
    found: list[CapturedRow] = []
    position = Position()
    for _ in range(400):
        if len(found) >= count:
            break
        batch = capture.fetch(position, 100)
        found, position = [*found, *batch.rows], batch.position
    return found


def test_a_checkpoint_past_the_database_or_the_slot_stops_the_relay(wal: WalSource) -> None:
    capture = WalCapture(wal.app, wal.source_id)
    with pytest.raises(UnsafeOutboxError, match="before it"):
        capture.check(Position(lsn=2**62, index=1))
    with pytest.raises(ConfigError, match="written by poll capture"):
        capture.check(Position(after_id=3, base="1:1:", target="5:5:"))
    drop_slot(wal.app, wal.source_id)
    with pytest.raises(UnsafeOutboxError, match="slot was missing"):
        WalCapture(wal.app, wal.source_id).check(Position(lsn=1, index=1))


def test_wal_capture_is_refused_for_sqlite() -> None:
    with pytest.raises(ValidationError, match="capture=wal"):
        RelaySettings(capture="wal", database_url=SecretStr("sqlite:///app.db"))


def test_positions_keep_older_checkpoints_readable() -> None:
    old = {"after_id": 7, "base": "1:1:", "target": "2:2:", "after_event_id": None}
    assert Position.from_json(old) == Position(after_id=7, base="1:1:", target="2:2:")
    assert Position.from_json(old).to_json() == old  # polling checkpoints are written as before
    assert Position.from_json(Position(lsn=2**40, index=3).to_json()) == Position(lsn=2**40, index=3)


# --- events written as logical messages (OUTBOXKIT_OUTBOX_WRITE_AS=message) ------------------


def messages(wal: WalSource) -> Session:
    """A session of an app that writes its events as logical messages, not rows."""
    return Session(wal.app, info={SETTINGS_KEY: OutboxSettings(topic_template=wal.topic, write_as="message")})


def flag(session: Session, group: str, reason: str = "test") -> str:
    """One domain event of thing `group`, written in `session`'s transaction; its event id."""
    return outbox.publish(session, ThingFlagged(group=group, reason=reason))


def driver(session: Session) -> psycopg.Connection[tuple[object, ...]]:
    """The session's own database connection, for raw SQL in its transaction."""
    raw = session.connection().connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def outbox_count(wal: WalSource) -> int:
    with wal.app.connect() as conn:
        return int(conn.execute(text("select count(*) from outbox")).scalar_one())


def test_model_events_written_as_messages_are_published_once_in_commit_order_leaving_no_row(
    wal: WalSource,
) -> None:
    relay = wal.relay()
    with messages(wal) as first, messages(wal) as second:
        first.add(Thing(id=1, group="a", n=1))
        first.flush()  # first in the log, and the transaction stays open...
        second.add_all([Thing(id=2, group="b", n=2), Thing(id=3, group="b", n=3)])
        second.commit()  # ...while the second commits before it
        first.add(Thing(id=4, group="a", n=4))
        first.commit()
    publish(relay, 4)
    records = committed_records(wal.kafka, wal.topic)
    assert [(r.key, r.headers["outboxkit-aggregate-version"], r.value["state"]["n"]) for r in records] == [
        ("b", "1", 2),
        ("b", "2", 3),
        ("a", "1", 1),
        ("a", "2", 4),
    ]
    assert outbox_count(wal) == 0


def test_rows_and_messages_mixed_in_and_across_transactions_are_published_in_the_order_written(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay = wal.relay(batch_size=2)  # positions fall between a row and a message, both ways
    with messages(wal) as session:
        expected = [flag(session, "a")]
        expected += wal.insert(driver(session), "row", 2)  # two rows in the same transaction
        expected += [flag(session, "a"), flag(session, "b")]
        session.commit()
    with raw_connection(pg_schema) as conn:
        expected += wal.insert(conn, "rows-only", 1)
    with messages(wal) as session:
        expected += [flag(session, "b")]
        session.commit()
    publish(relay, 7)
    assert wal.published() == expected
    assert relay.delete_published(100, None) == 3  # the rows; the messages left nothing to delete
    assert outbox_count(wal) == 0


def test_messages_of_a_rolled_back_transaction_or_savepoint_are_never_published(wal: WalSource) -> None:
    relay = wal.relay()
    with messages(wal) as session:
        flag(session, "gone")
        session.flush()
        session.rollback()
    with messages(wal) as session:
        kept = [flag(session, "kept")]
        savepoint = session.begin_nested()
        flag(session, "kept", "rolled back with its savepoint")
        savepoint.rollback()
        kept.append(flag(session, "kept"))
        session.commit()
    publish(relay, 2)
    assert relay.step() == 0  # caught up with the log: nothing else comes
    records = committed_records(wal.kafka, wal.topic)
    assert [(r.event_id, r.headers["outboxkit-aggregate-version"]) for r in records] == [
        (kept[0], "1"),
        (kept[1], "2"),  # the rolled-back version was rolled back with it
    ]


def test_a_restart_inside_a_transaction_of_messages_and_rows_skips_exactly_what_was_published(
    wal: WalSource,
) -> None:
    first = wal.relay(batch_size=3)
    with messages(wal) as session:
        expected = [flag(session, f"g{n % 2}") for n in range(4)]
        expected += wal.insert(driver(session), "mid", 2)
        expected += [flag(session, f"g{n % 2}") for n in range(4)]
        session.commit()  # ten events at one commit LSN
    with messages(wal) as session:
        expected += [flag(session, "next")]
        session.commit()
    restart_after_three(first, wal, expected)


def test_the_relay_keeps_its_shards_messages_which_publication_row_filters_do_not_filter(
    wal: WalSource,
) -> None:
    shards = [WalCapture(wal.app, wal.source_id, Shard(i, 2)) for i in range(2)]
    try:
        with messages(wal) as session:
            written = [(flag(session, group), shard_key(group)) for group in ("a", "b", "c", "d", "e")]
            written += [(event_id, n) for n, event_id in enumerate(wal.insert(driver(session), "t", 4))]
            session.commit()
        expected = [[event_id for event_id, key in written if key % 2 == i] for i in range(2)]
        seen = [
            [row.envelope.event_id for row in _drain(capture, len(expected[i]))]
            for i, capture in enumerate(shards)
        ]
    finally:
        for i, capture in enumerate(shards):
            capture.close()
            drop_slot(wal.app, wal.source_id, Shard(i, 2))
    assert seen == expected
    assert all(expected)  # both shards had some of each kind to keep


def test_non_transactional_messages_and_messages_of_other_outboxes_or_writers_are_ignored(
    wal: WalSource,
) -> None:
    relay = wal.relay()
    with wal.app.begin() as conn:
        oid = conn.execute(text("select cast(to_regclass('outbox') as oid)")).scalar_one()
        ours, another_outbox = f"{MESSAGE_PREFIX}{oid}", f"{MESSAGE_PREFIX}{oid + 1}"
        for n, (transactional, prefix) in enumerate(((False, ours), (True, another_outbox))):
            conn.execute(
                text("select pg_logical_emit_message(:transactional, :prefix, cast(:content as text))"),
                {"transactional": transactional, "prefix": prefix, "content": _event_json(wal, f"fake-{n}")},
            )
        conn.execute(text("select pg_logical_emit_message(true, 'someone.else', 'not an event')"))
    with messages(wal) as session:
        kept = flag(session, "kept")
        session.commit()
    publish(relay, 1)
    assert relay.step() == 0
    assert wal.published() == [kept]


def _event_json(wal: WalSource, event_id: str) -> str:
    """A logical message's content as `outbox.store` writes it: the row's columns."""
    columns = {
        "event_id": event_id, "aggregatetype": "thing", "aggregateid": "x", "aggregateversion": 1,
        "type": "Forged", "topic": wal.topic, "key": "x", "payload": "{}", "headers": "{}",
        "schema_version": 1, "shard_key": 0, "xid": None, "created_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    return json.dumps(columns)


def test_a_message_kafka_refuses_for_good_is_a_dead_letter_kept_whole_and_written_once(
    wal: WalSource, unique_name: Callable[[str], str]
) -> None:
    wal.topic = unique_name("small")
    ensure_topic(wal.kafka, wal.topic, config={"max.message.bytes": "4000"})
    first = wal.relay()
    with messages(wal) as session:
        published = [flag(session, "a"), flag(session, "a", "x" * 20_000), flag(session, "a")]
        session.commit()
    with messages(wal) as session:
        last = flag(session, "a", "y" * 20_000)  # the last of the log: the checkpoint stays before it
        session.commit()
    publish(first, 2)
    for _ in range(400):  # then it reaches the last one
        if first.stats.dead_letters == 2:
            break
        first.step()
    first.close()
    second = wal.relay()  # gets the last one again from the slot, and finds it refused again
    assert second.step() == 0
    assert (first.stats.dead_letters, second.stats.dead_letters) == (2, 1)
    assert wal.published() == [published[0], published[2]]
    with wal.app.connect() as conn:
        letters = conn.execute(text("select * from outbox_dead_letters order by aggregateversion")).all()
    assert [(d.event_id, d.aggregateversion, d.key, d.type) for d in letters] == [
        (published[1], 2, "a", "ThingFlagged"),
        (last, 4, "a", "ThingFlagged"),
    ]
    assert json.loads(letters[0].payload) == {"group": "a", "reason": "x" * 20_000}
    assert all(d.id < 0 and d.topic == wal.topic and d.reason for d in letters)  # no row to point to


def test_a_fetch_failing_while_postgresql_stops_lets_it_stop(wal: WalSource, pg_schema: PgSchema) -> None:
    """Found by B2: a stopping server waits for each slot's walsender, which waits until its
    client confirmed all it was sent. A relay holding rows it has not published yet (a backlog),
    whose fetches failed — the stopping server refuses the connections a fetch asks for — kept
    its stream open while it backed off, and the server never stopped (`pg_ctl stop` timed out)."""
    capture = WalCapture(wal.app, wal.source_id)
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "held", 3)
    batch = capture.fetch(Position(), 10)  # received; its Kafka transaction is yet to commit
    assert len(batch.rows) == 3
    with stopping("postgres") as down:
        try:
            while not down.done():  # the relay retries its fetch, failing, as the server stops
                with suppress(CaptureError):
                    capture.fetch(batch.position, 10)
                time.sleep(0.5)
            down.result()  # it stopped (`pg_ctl stop` gives up after 60 s)
        finally:
            capture.close()
    wal.app.dispose()  # its connections died with the server


def test_an_idle_relay_is_woken_by_the_commit_itself_not_by_its_poll_interval(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay, stop = wal.relay(), threading.Event()
    service = RelayService(SoleLease(), lambda _: relay, poll_interval=3600.0, lease_interval=3600.0)
    runner = threading.Thread(target=service.run, args=(stop.is_set,), daemon=True)
    with psycopg.connect(
        pg_schema.url.replace("postgresql+psycopg", "postgresql"),
        options=f"-csearch_path={pg_schema.name}",
        autocommit=True,  # each insert commits at once; raw SQL sends no NOTIFY either
    ) as conn:
        expected = wal.insert(conn, "first", 1)
        runner.start()
        try:
            until(lambda: relay.stats.published == 1)  # the stream is open; next, the relay idles
            time.sleep(1.0)
            expected += wal.insert(conn, "woken", 2)
            until(lambda: relay.stats.published == 3)  # within minutes, not the hour it would poll after
        finally:
            stop.set()
            wal.insert(conn, "stop", 1)  # wakes it once more, to see the stop
            runner.join(timeout=120)
    assert not runner.is_alive()
    assert wal.published()[:3] == expected


def until(condition: Callable[[], bool], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the test's cap"
        time.sleep(0.01)


def test_a_row_from_the_log_takes_its_values_in_the_order_of_the_wire_columns() -> None:
    """The log's rows carry exactly the columns a polling read takes (`rows.WIRE`), in its order:
    the two captures build one envelope from the same columns."""
    assert wal_capture._WalRow._fields == tuple(column.name for column in WIRE)
