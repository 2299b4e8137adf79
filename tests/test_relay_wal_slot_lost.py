"""A replication slot PostgreSQL invalidated (`max_slot_wal_keep_size`), and `relay reset-slot`.

On a PostgreSQL of the test's own (initdb'd under /var/tmp, 1 MB WAL segments, a slot may keep 1
MB of WAL), as the shared one must never lose a slot: events are published, the relay stops,
more are written, other writes and checkpoints push the slot's WAL out until the server marks it
lost, and more events are written. Then, through the `outboxkit` command as an operator runs it:
the relay stops with its named exit code, `reset-slot --yes` recreates the slot and publishes what
the lost WAL held, the relay carries on, and Kafka holds every event once, in version order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine

import outbox
from runtime.kafka import KafkaSettings
from runtime.process import ExitCode
from tests.helpers import committed_event_ids
from tests.processes import free_port, outboxkit

_COLUMNS = "event_id, aggregatetype, aggregateid, aggregateversion, type, topic, key, payload"


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    return found[-1].parent


def _as_owner(*cmd: str) -> list[str]:
    """PostgreSQL refuses to run as root: there, it runs as Debian's postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture
def small_wal_postgres() -> Iterator[str]:
    """A PostgreSQL of this test alone whose slots may keep 1 MB of WAL; its URL."""
    home = Path("/var/tmp") / f"okit-slot-lost-{uuid.uuid4().hex[:8]}"
    home.mkdir(mode=0o755)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    bindir, port = _bindir(), free_port()
    try:
        run = lambda *cmd: subprocess.run(_as_owner(*cmd), check=True, capture_output=True, timeout=120)  # noqa: E731
        run(
            str(bindir / "initdb"),
            "-D",
            str(home / "data"),
            "-U",
            "outboxkit",
            "--auth=trust",
            "--wal-segsize=1",
        )
        settings = {
            "port": port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{home}'",
            "wal_level": "logical",
            "max_slot_wal_keep_size": "1MB",
            "fsync": "off",  # a throwaway instance: its WAL need not survive a crash of the machine
        }
        with (home / "data" / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        run(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-l", str(home / "log"), "-w", "start")
        with psycopg.connect(f"postgresql://outboxkit@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("create database outboxkit")
        yield f"postgresql://outboxkit@127.0.0.1:{port}/outboxkit"
    finally:
        subprocess.run(
            _as_owner(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "immediate", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(home, ignore_errors=True)


def write(url: str, topic: str, versions: range) -> list[str]:
    """Outbox rows of aggregate `a`, one per version, in one transaction (raw SQL, as any writer)."""
    found = [(f"a-{v}", "thing", "a", v, "raw", topic, "a", "{}") for v in versions]
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            f"insert into outbox ({_COLUMNS}) values (%s, %s, %s, %s, %s, %s, %s, %s)", found
        )
    return [str(row[0]) for row in found]


def lose_the_slot(url: str) -> None:
    """Write WAL elsewhere and checkpoint until the server has invalidated the (stopped) slot."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table elsewhere (n int, pad text)")
        for _ in range(200):
            conn.execute("insert into elsewhere select n, repeat('x', 100) from generate_series(1, 5000) n")
            conn.execute("select pg_switch_wal()")
            conn.execute("checkpoint")
            status = conn.execute("select wal_status from pg_replication_slots").fetchone()
            if status is not None and status[0] == "lost":
                return
    raise AssertionError(f"the slot was not invalidated (wal_status {status})")


def test_a_lost_slot_stops_the_relay_and_reset_slot_publishes_what_its_wal_held_exactly_once(
    small_wal_postgres: str,
    kafka: KafkaSettings,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    url = small_wal_postgres
    app = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    outbox.metadata.create_all(app)
    app.dispose()
    topic = new_topic()
    env = {
        "OUTBOXKIT_RELAY_DATABASE_URL": url,
        "OUTBOXKIT_RELAY_CAPTURE": "wal",
        "OUTBOXKIT_RELAY_SOURCE_ID": unique_name("src"),
        "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": unique_name("ckpt"),
        "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "OUTBOXKIT_RELAY_CLEANUP": "false",  # published rows stay: reset-slot must find them in Kafka
    }
    relay = ("relay", "run", "--drain")

    assert outboxkit(*relay, env=env).returncode == ExitCode.OK  # creates the slot: it streams what follows
    expected = write(url, topic, range(1, 6))
    assert outboxkit(*relay, env=env).returncode == ExitCode.OK
    assert committed_event_ids(kafka, topic) == expected
    expected += write(url, topic, range(6, 9))  # committed while no relay runs: in WAL about to go
    lose_the_slot(url)
    expected += write(url, topic, range(9, 11))

    stopped = outboxkit(*relay, env=env)
    assert stopped.returncode == ExitCode.SLOT_LOST, stopped.stderr
    assert "invalidated" in stopped.stderr
    assert "outboxkit relay reset-slot --yes" in stopped.stderr  # what to do next
    status = outboxkit("relay", "status", env=env)
    assert "STOPPED" in status.stdout
    assert "lost" in status.stdout

    assert outboxkit("relay", "reset-slot", env=env).returncode == ExitCode.CONFIG  # not without --yes
    reset = outboxkit("relay", "reset-slot", "--yes", env=env)
    assert reset.returncode == ExitCode.OK, reset.stderr
    assert "5 event(s) published from the outbox table, 5 found in Kafka already" in reset.stdout, (
        reset.stderr
    )

    expected += write(url, topic, range(11, 13))  # committed after the new slot's start
    resumed = outboxkit(*relay, env=env)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert committed_event_ids(kafka, topic) == expected  # each once, versions in order
