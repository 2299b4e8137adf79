"""The capture contract suite: what every capture source guarantees, run once per source.

A capture source (`relay.capture.source`) is gap-free and keeps each aggregate's commit order;
the relay around it publishes every committed event once, whatever crashes in between. Each
test here states one such guarantee and checks it through an independent read_committed
consumer, never through the source's internals, so the same test holds any source to it:

* gap-free, with a late commit and with interleaved transactions, and under concurrent writers;
* per-aggregate commit order, also where transaction ids say otherwise (xid inversion);
* a multi-row INSERT, and a COPY next to one in a transaction: rows sharing a transaction
  (one commit, one WAL commit LSN) are each published, once, even across batches and restarts;
* a 100,000-row transaction, published whole, once, in order;
* the relay process SIGKILLed right after a Kafka commit (before a log-based source confirmed
  its slot) and at random moments, a paused relay fenced as a zombie, PostgreSQL restarted
  under a running relay.

**Adding a source** is adding its name to `CAPTURE_KINDS` and a branch to `capture_source`:
in-process tests get the source from that factory; process tests pass its relay setting to the
relay as `OUTBOXKIT_RELAY_CAPTURE`, the relay setting `capture` that selects the source ("poll",
the default, or "wal"), with the source's server-side state (a replication slot) made by the
factory before the app writes and dropped after.

"wal-message" is WAL capture of an app that writes its events as logical messages
(`OUTBOXKIT_OUTBOX_WRITE_AS=message`) instead of rows: the same guarantees, held by the same
source, for the other write path. Where a test writes rows by hand (COPY), they mix with the
app's messages in one transaction.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from outbox.ids import EventIdGenerator
from outbox.rows import Draft, write
from outbox.settings import WriteAs
from relay import Relay
from relay.capture import CaptureSource, PostgresCapture
from relay.capture.wal import WalCapture, drop_slot
from relay.shards import ONLY, Shard
from runtime.kafka import KafkaSettings
from runtime.process import ExitCode
from tests.conftest import PgSchema
from tests.helpers import Record, committed_records, make_relay
from tests.models import Base, Thing
from tests.processes import stopped
from tests.sidecars import Sidecar, assert_exactly_once_in_commit_order, running_sidecar, wait_for_records
from wire import shard_key

# Every capture source the relay has, with the relay's `capture` setting and the app's
# `write_as` setting that make it.
KINDS = {"poll": ("poll", "row"), "wal": ("wal", "row"), "wal-message": ("wal", "message")}
CAPTURE_KINDS = tuple(KINDS)


@contextmanager
def capture_source(kind: str, engine: Engine, source_id: str, shard: Shard = ONLY) -> Iterator[CaptureSource]:
    """The capture source `kind` reading `engine`'s outbox for relays of `source_id` (unique per
    test: what a source names on the server, a replication slot, derives from it), for the block.
    What a source creates on the server for itself it drops after: a slot nobody reads would pin
    the shared PostgreSQL's WAL."""
    if kind == "poll":
        yield PostgresCapture(engine, shard)
        return
    if KINDS[kind][0] == "wal":
        source = WalCapture(engine, source_id, shard)
        try:
            yield source
        finally:
            source.close()
            drop_slot(engine, source_id, shard)
        return
    raise ValueError(f"no capture source {kind!r}: add it to capture_source (and CAPTURE_KINDS)")


@pytest.fixture(params=CAPTURE_KINDS)
def capture_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Captured:
    """An app database on PostgreSQL, its topic, and relays of one source id reading it through
    the capture source under test (each relay with a source of its own, as a new process has)."""

    app: Engine
    topic: str
    new_relay: Callable[[int], Relay]
    write_as: WriteAs
    relay: Relay = field(init=False)

    def __post_init__(self) -> None:
        self.relay = self.new_relay(1)

    @property
    def settings(self) -> OutboxSettings:
        return OutboxSettings(topic_template=self.topic, write_as=self.write_as)

    def session(self) -> Session:
        return Session(self.app, info={SETTINGS_KEY: self.settings})

    def publish_all(self) -> int:
        """Run the relay until the outbox is drained; return how many events it published."""
        before = self.relay.stats.published
        return self.relay.run(lambda: False, drain=True).published - before

    def publish_restarting(self, events: int, batch_size: int) -> int:
        """Publish `events` events one batch per relay life, each relay (and source) resuming from
        the previous one's checkpoint: as many lives as batches, and one more that must find
        nothing left. Return how many events they published."""
        published = 0
        for _ in range(-(-events // batch_size) + 1):
            relay = self.new_relay(batch_size)
            try:
                step = relay.step()
            finally:
                relay.close()
            if step == 0:
                break
            published += step
        return published


@pytest.fixture
def captured(
    capture_kind: str,
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> Iterator[Captured]:
    app = create_engine(pg_schema.url, connect_args=pg_schema.connect_args, pool_size=4)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    source_id, checkpoints = unique_name("src"), unique_name("ckpt")
    with ExitStack() as sources:

        def new_relay(batch_size: int) -> Relay:
            capture = sources.enter_context(capture_source(capture_kind, app, source_id))
            relay = make_relay(app, kafka, source_id, checkpoints, batch_size=batch_size, capture=capture)
            relay.start()
            return relay

        yield Captured(app, new_topic(), new_relay, KINDS[capture_kind][1])
    app.dispose()


def published(records: list[Record]) -> dict[str | None, list[int]]:
    """Each key's `n`s in the order they were published, after checking no event came twice and
    each key's versions rise one by one: what a consumer of each aggregate needs."""
    ids = [record.event_id for record in records]
    assert len(ids) == len(set(ids)), "an event was published twice"
    by_key: dict[str | None, list[int]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record.value["state"]["n"])
    for key in by_key:
        versions = [int(r.headers["outboxkit-aggregate-version"]) for r in records if r.key == key]
        assert versions == list(range(versions[0], versions[0] + len(versions))), f"{key} out of order"
    return by_key


def copy_events(session: Session, topic: str, group: str, count: int) -> None:
    """`count` events of thing `group` (n = 0, 1, ...) written into the outbox with one COPY, in the
    session's transaction, as `outbox.store` writes rows: the aggregate's counter bumped (and so
    locked to commit) first, its versions, the transaction's xid and rising creation times."""
    raw = session.connection().connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    with raw.cursor() as cursor:
        cursor.execute(
            "INSERT INTO outbox_versions AS v (aggregatetype, aggregateid, version) VALUES ('thing', %s, %s)"
            " ON CONFLICT (aggregatetype, aggregateid) DO UPDATE SET version = v.version + EXCLUDED.version"
            " RETURNING v.version - %s, pg_current_xact_id()::text::bigint, clock_timestamp()",
            (group, count, count),
        )
        before, xid, now = cursor.fetchone() or ()
        event_id = EventIdGenerator()
        columns = "event_id, aggregatetype, aggregateid, aggregateversion, type, topic, key, payload, "
        with cursor.copy(f"COPY outbox ({columns} shard_key, xid, created_at) FROM STDIN") as copy:
            for n in range(count):
                payload = json.dumps({"state": {"group": group, "n": n}})
                row = (event_id(), "thing", group, before + n + 1, "ThingCopied", topic, group, payload)
                copy.write_row((*row, shard_key(group), xid, now + timedelta(microseconds=n)))


def test_a_row_committed_after_a_newer_one_was_published_is_still_published(
    kafka: KafkaSettings, captured: Captured
) -> None:
    with captured.session() as a:
        a.add(Thing(id=1, group="a", n=1))
        a.flush()  # A holds outbox id 1 and stays open
        with captured.session() as b:
            b.add(Thing(id=2, group="b", n=2))
            b.commit()  # B's row (id 2) commits first
        assert captured.publish_all() == 1  # B is not held back behind the open A...
        a.commit()
    assert captured.publish_all() == 1  # ...and A, committed late with the smaller id, is not lost

    assert [(r.key, r.value["state"]["n"]) for r in committed_records(kafka, captured.topic)] == [
        ("b", 2),
        ("a", 1),
    ]


def test_transactions_whose_writes_interleave_are_each_published_whole_in_commit_order(
    kafka: KafkaSettings, captured: Captured
) -> None:
    with captured.session() as a, captured.session() as b:
        for n in range(3):  # a, b, a, b, a, b: their rows interleave in the table and in the WAL
            a.add(Thing(id=10 + n, group="a", n=n))
            a.flush()
            b.add(Thing(id=20 + n, group="b", n=n))
            b.flush()
        b.commit()
        assert captured.publish_all() == 3  # all of B, none of the open A
        a.commit()
    assert captured.publish_all() == 3  # then all of A

    records = committed_records(kafka, captured.topic)
    assert [r.key for r in records] == ["b"] * 3 + ["a"] * 3
    assert published(records) == {"a": [0, 1, 2], "b": [0, 1, 2]}


def test_one_aggregates_events_follow_commit_order_even_when_xids_say_otherwise(
    kafka: KafkaSettings, captured: Captured
) -> None:
    with captured.session() as setup:
        setup.add(Thing(id=1, group="k", n=0))
        setup.commit()

    t1, t2 = captured.session(), captured.session()
    xid1 = t1.execute(text("select pg_current_xact_id()::text::bigint")).scalar_one()  # T1's xid first
    thing2 = t2.get(Thing, 1)
    assert thing2 is not None
    thing2.n = 2
    t2.flush()  # T2 (the newer xid) holds the aggregate's row locks
    xid2 = t2.execute(text("select pg_current_xact_id()::text::bigint")).scalar_one()

    def t1_updates_the_same_thing() -> None:
        thing1 = t1.get(Thing, 1, populate_existing=True)
        assert thing1 is not None
        thing1.n = 1
        t1.commit()  # waits for T2's lock, then commits after it

    blocked = threading.Thread(target=t1_updates_the_same_thing)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive(), "T1 should be waiting for T2's row lock"
    t2.commit()
    blocked.join(10)
    assert not blocked.is_alive()
    t1.close()
    t2.close()

    assert xid1 < xid2  # the trap: xid order says T1 first, but T2 committed first
    captured.publish_all()
    events = committed_records(kafka, captured.topic)
    assert [(r.headers["outboxkit-aggregate-version"], r.value["state"]["n"]) for r in events] == [
        ("1", 0),
        ("2", 2),  # T2's update, committed first
        ("3", 1),  # T1's update, committed second
    ]


def test_many_concurrent_writers_lose_nothing_and_duplicate_nothing(
    kafka: KafkaSettings, captured: Captured
) -> None:
    writers, per_writer = 4, 60
    stop = threading.Event()

    def write(worker: int) -> None:
        for n in range(per_writer):
            with captured.session() as session:
                session.add(Thing(group=f"w{worker}", n=n))
                session.commit()

    def relay_while_writing() -> None:
        while not stop.is_set():
            captured.relay.step()

    relay_thread = threading.Thread(target=relay_while_writing)
    relay_thread.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    relay_thread.join()
    captured.publish_all()

    events = committed_records(kafka, captured.topic)
    assert len({r.headers["outboxkit-event-id"] for r in events}) == len(events) == writers * per_writer
    in_order = {f"w{w}": list(range(per_writer)) for w in range(writers)}
    assert {key: [r.value["state"]["n"] for r in events if r.key == key] for key in in_order} == in_order


@pytest.mark.parametrize("groups", [1, 3], ids=["one-aggregate", "three-aggregates"])
def test_a_multi_row_insert_is_published_row_by_row_once_across_batches_and_restarts(
    kafka: KafkaSettings, captured: Captured, groups: int
) -> None:
    inserts: list[str] = []
    event.listen(captured.app, "before_cursor_execute", lambda *args: inserts.append(args[2]))
    with captured.session() as session:
        session.add_all(Thing(id=n, group=f"g{n % groups}", n=n // groups) for n in range(45))
        session.commit()  # one flush: outbox.store writes all 45 rows in one statement
    assert sum(("INSERT INTO outbox " in s or "pg_logical_emit_message" in s) for s in inserts) == 1

    # 7 rows a batch, a new relay for each: positions fall inside the one transaction
    assert captured.publish_restarting(45, batch_size=7) == 45
    assert published(committed_records(kafka, captured.topic)) == {
        f"g{g}": list(range(45 // groups)) for g in range(groups)
    }


def test_a_copy_and_a_multi_row_insert_in_one_transaction_are_published_once_in_order(
    kafka: KafkaSettings, captured: Captured
) -> None:
    with captured.session() as session:
        session.add_all(Thing(id=n, group="inserted", n=n) for n in range(20))
        session.flush()
        copy_events(session, captured.topic, "copied", 30)
        session.add_all(Thing(id=100 + n, group="inserted", n=20 + n) for n in range(5))
        session.commit()

    assert captured.publish_restarting(55, batch_size=7) == 55
    records = committed_records(kafka, captured.topic)
    assert published(records) == {"inserted": list(range(25)), "copied": list(range(30))}


def test_a_hundred_thousand_row_transaction_is_published_whole_once_and_in_order(
    kafka: KafkaSettings, captured: Captured
) -> None:
    rows = 100_000
    with captured.session() as session:
        if captured.write_as == "message":  # one statement emitting them all, as the app's writes do
            payloads = ({"state": {"group": "big", "n": n}} for n in range(rows))
            drafts = [Draft(captured.topic, "ThingCopied", "thing", "big", payload) for payload in payloads]
            write(session.connection(), drafts, captured.settings)
        else:
            copy_events(session, captured.topic, "big", rows)
        session.commit()
    captured.relay = captured.new_relay(500)

    assert captured.publish_all() == rows
    assert published(committed_records(kafka, captured.topic)) == {"big": list(range(rows))}


@pytest.fixture
def sidecar(
    capture_kind: str,
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> Iterator[Sidecar]:
    capture_setting, write_as = KINDS[capture_kind]
    capture = {"OUTBOXKIT_RELAY_CAPTURE": capture_setting}
    # What a source keeps on the server for itself (a slot) exists before the app writes, as it
    # would in production: a slot created later never sees rows committed before it.
    with ExitStack() as stack:
        sidecar = stack.enter_context(running_sidecar(kafka, pg_schema, new_topic(3), unique_name, **capture))
        sidecar.write_as = write_as
        stack.enter_context(
            capture_source(capture_kind, sidecar.app, sidecar.env["OUTBOXKIT_RELAY_SOURCE_ID"])
        )
        yield sidecar


def test_a_relay_killed_right_after_a_kafka_commit_publishes_nothing_twice(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    """The relay logs the commit once Kafka confirmed it; a log-based source confirms its slot
    only after that, so these kills land between the commit and the slot's confirmation."""
    sidecar.write(60)
    for commits in (1, 3, 2):  # killed just after its 1st, then 3rd, then 2nd commit of each life
        relay = sidecar.start()
        relay.wait_for("committed Kafka transaction", commits)
        relay.kill()
    sidecar.drain()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 60)


def test_a_relay_killed_at_random_moments_while_the_app_writes_loses_and_duplicates_nothing(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    writer = threading.Thread(target=sidecar.write, args=(300,))
    writer.start()
    rng, kills = random.Random(7), 0
    while writer.is_alive() or kills < 6:
        relay = sidecar.start()
        time.sleep(rng.uniform(0.2, 1.5))
        relay.kill()
        kills += 1
    writer.join()
    sidecar.drain()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 300)


def test_a_paused_relay_resuming_after_a_successor_took_over_stops_with_a_named_code_adding_nothing(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.env["OUTBOXKIT_RELAY_LEASE_TIMEOUT"] = "3"
    sidecar.write(40)
    zombie = sidecar.start()
    zombie.wait_for("committed Kafka transaction")
    zombie.signal(signal.SIGSTOP)

    sidecar.write(40, first=40)  # the app keeps writing while the zombie sleeps
    successor = sidecar.start()  # waits out the zombie's lease, fences it, publishes everything
    try:
        wait_for_records(kafka, sidecar.topic, 80, timeout=60)
        zombie.signal(signal.SIGCONT)
        # Paused inside a transaction, its commit is fenced and it exits; paused between two, it
        # finds its lease gone and stands by. Either way it says so and publishes nothing more.
        zombie.wait_for_any(("fenced", "standing by"), timeout=60)
        if "standing by" in "".join(zombie.lines):
            time.sleep(2)  # a standby must stay quiet: no commit after its lease was lost
            assert zombie.process.poll() is None
        else:
            assert zombie.wait(60) == ExitCode.FENCED
        successor.signal(signal.SIGTERM)
        assert successor.wait(60) == ExitCode.OK
    finally:
        zombie.kill()
        successor.kill()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 80)


def test_postgresql_restarted_under_a_running_relay_loses_nothing(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    relay = sidecar.start()
    try:
        sidecar.write(20)
        wait_for_records(kafka, sidecar.topic, 20, timeout=60)
        with stopped("postgres"):
            time.sleep(5)  # the relay retries: its capture fails, its leases are gone
        sidecar.write(20, first=20)
        wait_for_records(kafka, sidecar.topic, 40, timeout=90)
        assert relay.count("standing by") >= 1  # it noticed, and took its shard again
        relay.signal(signal.SIGTERM)
        assert relay.wait(60) == ExitCode.OK
    finally:
        relay.kill()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 40)
