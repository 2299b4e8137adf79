"""A WAL source's replication slot seen and kept in bounds: its lag in `relay status` and in the
relay's metrics, and heartbeats that let it go of WAL the outbox does not need (writes to other
tables). On the shared PostgreSQL and Kafka; each relay's slot is dropped at the end.
"""

from __future__ import annotations

import json

from sqlalchemy import make_url, text

from relay import Relay, RelaySettings
from relay.capture.slots import slot_name, slot_state
from relay.leases import SoleLease
from relay.service import RelayService
from relay.status import relay_status
from tests.conftest import PgSchema
from tests.processes import metric
from tests.test_relay_wal import WalSource, publish, raw_connection, wal

__all__ = ["wal"]  # the fixture, shared with the WAL capture specifications

_OTHER_ROWS = 2000  # about 200 kB of WAL in a table the outbox's publication leaves out


def write_elsewhere(pg_schema: PgSchema) -> None:
    """WAL the slot must keep until it is confirmed past it, though no outbox row is in it."""
    with raw_connection(pg_schema) as conn:
        conn.execute("create table if not exists elsewhere (n int, pad text)")
        conn.execute(
            f"insert into elsewhere select n, repeat('x', 60) from generate_series(1, {_OTHER_ROWS}) n"
        )


def settings_of(wal: WalSource, pg_schema: PgSchema) -> RelaySettings:
    url = (
        make_url(pg_schema.url)
        .update_query_dict(pg_schema.connect_args)
        .render_as_string(hide_password=False)
    )
    return RelaySettings(
        database_url=url,
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
