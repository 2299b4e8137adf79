"""A WAL source's replication slot seen and kept in bounds: its lag in `relay status` and in the
relay's metrics, and heartbeats that let it go of WAL the outbox does not need (writes to other
tables). On the shared PostgreSQL and Kafka; each relay's slot is dropped at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, make_url, text

import outbox
from relay import Relay, RelaySettings
from relay.capture.slots import slot_name, slot_state
from relay.capture.wal import WalCapture
from relay.errors import RelayError
from relay.leases import AdvisoryLeases, SoleLease
from relay.service import RelayService
from relay.shards import ONLY, Shard
from relay.slot_commands import reset_slots
from relay.status import relay_status
from runtime.process import ExitCode
from tests.conftest import PgSchema
from tests.processes import metric, outboxkit
from tests.test_relay_wal import WalSource, publish, raw_connection, wal
from tests.test_relay_wal import _drain as drain

__all__ = ["wal"]  # the fixture, shared with the WAL capture specifications

_OTHER_ROWS = 2000  # about 200 kB of WAL in a table the outbox's publication leaves out


def write_elsewhere(pg_schema: PgSchema) -> None:
    """WAL the slot must keep until it is confirmed past it, though no outbox row is in it."""
    with raw_connection(pg_schema) as conn:
        conn.execute("create table if not exists elsewhere (n int, pad text)")
        conn.execute(
            f"insert into elsewhere select n, repeat('x', 60) from generate_series(1, {_OTHER_ROWS}) n"
        )


def url_of(pg_schema: PgSchema) -> str:
    """The schema's URL, its search path in it: what a process is given."""
    with_path = make_url(pg_schema.url).update_query_dict(pg_schema.connect_args)
    return with_path.render_as_string(hide_password=False)


def settings_of(wal: WalSource, pg_schema: PgSchema) -> RelaySettings:
    return RelaySettings(
        database_url=url_of(pg_schema),
        source_id=wal.source_id,
        checkpoint_topic=wal.checkpoints,
        kafka=wal.kafka,
        capture="wal",
    )


def test_status_of_a_wal_source_reads_the_slot_and_creates_none(wal: WalSource, pg_schema: PgSchema) -> None:
    settings = settings_of(wal, pg_schema)
    before = relay_status(settings)
    assert slot_state(wal.app, slot_name(wal.source_id)) is None  # status is read-only
    assert before.shards[0].slot is not None
    assert before.shards[0].slot.wal_status is None
    assert before.shards[0].problem is None  # nothing published yet: nothing to continue
    assert "MISSING" in before.render()

    relay = wal.relay()
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 3)
    publish(relay, 3)
    seen = json.loads(relay_status(settings).to_json())
    [shard] = seen["shards"]
    assert shard["slot"]["name"] == slot_name(wal.source_id)
    assert shard["slot"]["active"] is True  # the relay streams it
    assert shard["slot"]["wal_status"] == "reserved"
    assert shard["slot"]["lag_bytes"] >= 0
    assert shard["problem"] is None
    assert shard["backlog"] is None  # not known without streaming the slot, which is the relay's
    assert seen["without_xid"] == 0  # raw SQL rows are captured from the log: no warning
    assert f"slot {slot_name(wal.source_id)}: active, reserved" in relay_status(settings).render()


def test_the_slot_lag_grows_with_wal_it_holds_in_bytes_and_seconds(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay = wal.relay()
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 1)
    publish(relay, 1)
    write_elsewhere(pg_schema)
    shown = scraped(relay)
    assert metric(shown, "outboxkit_relay_slot_lag_bytes") >= _OTHER_ROWS * 60
    assert metric(shown, "outboxkit_relay_slot_lag_seconds") > 0


def scraped(relay: Relay) -> str:
    """The relay service's /metrics once it has gone round with `relay` (then it stops)."""
    service = RelayService(SoleLease(), lambda _: relay)
    seen: list[str] = []

    def after_a_round() -> bool:
        if service.active:
            seen.append(service.metrics.render())
        return bool(seen)

    service.run(after_a_round)
    return seen[0]


def heartbeating(wal: WalSource, interval: float) -> Relay:
    relay = Relay.for_shard(
        wal.app, wal.kafka, wal.source_id, wal.checkpoints, capture="wal", heartbeat_interval=interval
    )
    wal.relays.append(relay)
    relay.start()
    return relay


def server_lsn(wal: WalSource) -> int:
    with wal.app.connect() as conn:
        return int(conn.execute(text("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")).scalar_one())


def test_heartbeats_let_an_idle_outbox_slot_go_of_other_tables_wal_and_publish_nothing_twice(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    relay = heartbeating(wal, interval=0.2)
    with raw_connection(pg_schema) as conn:
        expected = wal.insert(conn, "before", 2)
    publish(relay, 2)
    write_elsewhere(pg_schema)
    written = server_lsn(wal)  # the other table's WAL ends before this
    for _ in range(400):  # steps of an idle relay; each waits for the log for a moment
        relay.step()
        state = slot_state(wal.app, slot_name(wal.source_id))
        if state is not None and (state.confirmed_lsn or 0) >= written:
            break
    assert state is not None
    assert (state.confirmed_lsn or 0) >= written  # the WAL the outbox did not need is let go
    assert relay.stats.heartbeats >= 1
    assert relay.stats.published == 2
    relay.close()

    with raw_connection(pg_schema) as conn:
        expected += wal.insert(conn, "after", 2)
    successor = heartbeating(wal, interval=0.2)
    assert (successor.stats.position.lsn or 0) >= written  # resumed from the heartbeat's checkpoint
    publish(successor, 2)
    assert wal.published() == expected  # each once: nothing before the heartbeat was sent again


def test_without_heartbeats_the_slot_keeps_other_tables_wal(wal: WalSource, pg_schema: PgSchema) -> None:
    relay = heartbeating(wal, interval=0)
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 1)
    publish(relay, 1)
    write_elsewhere(pg_schema)
    for _ in range(20):
        assert relay.step() == 0
    assert relay.stats.heartbeats == 0
    state = slot_state(wal.app, slot_name(wal.source_id))
    assert state is not None
    assert (state.lag_bytes or 0) >= _OTHER_ROWS * 60


def migrate(wal: WalSource, pg_schema: PgSchema, *flags: str) -> None:
    """`outboxkit migrate --wal-source` on the schema, as the tables' owner (who creates them)."""
    outbox.metadata.drop_all(wal.app)  # the tables are migrate's to create here
    done = outboxkit("migrate", "--url", url_of(pg_schema), "--wal-source", wal.source_id, *flags, env={})
    assert done.returncode == ExitCode.OK, done.stderr


def test_migrate_creates_a_wal_sources_slots_ahead_of_its_relays_and_drop_slot_retires_them(
    wal: WalSource, pg_schema: PgSchema
) -> None:
    migrate(wal, pg_schema, "--wal-shards", "2")
    shards = [Shard(index, 2) for index in range(2)]
    slots = [slot_name(wal.source_id, shard) for shard in shards]
    assert all(slot_state(wal.app, slot) is not None for slot in slots)
    with raw_connection(pg_schema) as conn:
        wal.insert(conn, "t", 4)  # before any relay of the source ever ran: captured all the same
    captures = [WalCapture(wal.app, wal.source_id, shard) for shard in shards]
    try:
        seen = [[row.envelope.event_id for row in drain(capture, 2)] for capture in captures]
    finally:
        for capture in captures:
            capture.close()
    assert seen == [["t-0", "t-2"], ["t-1", "t-3"]]

    env = {
        "OUTBOXKIT_RELAY_DATABASE_URL": url_of(pg_schema),
        "OUTBOXKIT_RELAY_SOURCE_ID": wal.source_id,
        "OUTBOXKIT_RELAY_CAPTURE": "wal",
        "OUTBOXKIT_RELAY_SHARDS": "2",
    }
    assert outboxkit("relay", "drop-slot", env=env).returncode == ExitCode.CONFIG  # not without --yes
    assert all(slot_state(wal.app, slot) is not None for slot in slots)
    dropped = outboxkit("relay", "drop-slot", "--yes", env=env)
    assert dropped.returncode == ExitCode.OK, dropped.stderr
    assert all(slot_state(wal.app, slot) is None for slot in slots)
    with wal.app.connect() as conn:
        assert (
            conn.execute(
                text("select count(*) from pg_publication where pubname = any(:n)"), {"n": slots}
            ).scalar()
            == 0
        )


def test_reset_slot_refuses_while_a_relay_holds_the_shard(wal: WalSource, pg_schema: PgSchema) -> None:
    held = AdvisoryLeases(wal.app, wal.source_id, 1)
    try:
        assert held.refresh() == {ONLY}
        with pytest.raises(RelayError, match="a running relay holds shard 1/1"):
            reset_slots(settings_of(wal, pg_schema))  # the slot is missing: reset, once the relay stops
    finally:
        held.close()
    assert slot_state(wal.app, slot_name(wal.source_id)) is None  # nothing done


@pytest.fixture
def least_role(wal: WalSource, pg_schema: PgSchema, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A role with what the README says a relay needs once `migrate` made the tables, the
    publication and the slot: its URL. Dropped at the end."""
    migrate(wal, pg_schema)
    role = unique_name("relay").replace("-", "_")[:60]
    statements = [
        f'create role "{role}" login replication',
        f'grant usage on schema "{pg_schema.name}" to "{role}"',
        f'grant select, delete on outbox to "{role}"',
        f'grant select, insert on outbox_dead_letters to "{role}"',
    ]
    with wal.app.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    yield make_url(url_of(pg_schema)).set(username=role).render_as_string(hide_password=False)
    with wal.app.begin() as conn:
        conn.execute(text(f'drop owned by "{role}"'))
        conn.execute(text(f'drop role "{role}"'))


def test_a_relay_runs_with_the_least_role_the_readme_names(
    wal: WalSource, pg_schema: PgSchema, least_role: str
) -> None:
    limited = create_engine(least_role)
    try:
        relay = Relay.for_shard(limited, wal.kafka, wal.source_id, wal.checkpoints, capture="wal")
        wal.relays.append(relay)
        relay.start()
        with raw_connection(pg_schema) as conn:
            expected = wal.insert(conn, "t", 3)
        publish(relay, 3)
        assert relay.delete_published(100, None) == 3
        relay.close()
        settings = settings_of(wal, pg_schema).model_copy(update={"database_url": SecretStr(least_role)})
        assert relay_status(settings).shards[0].problem is None
    finally:
        limited.dispose()
    assert wal.published() == expected
