"""The relay as the sidecar process it is: shards shared and handed over, Kafka away, status,
wake-ups, probes and metrics. (Its crash guarantees — SIGKILLed at any moment, paused into a
zombie, PostgreSQL restarted under it — are in the capture contract suite,
`test_capture_contract.py`, run once per capture source.)

`outboxkit relay run` is started as an OS process against the real PostgreSQL and broker, and
the outcome is read from Kafka by an independent read_committed consumer.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from relay.errors import RelayError
from relay.publisher import TransactionalPublisher
from runtime.kafka import KafkaSettings
from runtime.process import ExitCode
from tests.conftest import PgSchema
from tests.helpers import committed_records
from tests.processes import (
    Forwarder,
    fastest_answer,
    free_port,
    get,
    metric,
    probes_until,
    stopped,
    wait_until_probe,
)
from tests.sidecars import (
    RelayProcess,
    Sidecar,
    assert_exactly_once_in_commit_order,
    running_sidecar,
    wait_for_records,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sidecar(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
) -> Iterator[Sidecar]:
    with running_sidecar(kafka, pg_schema, new_topic(3), unique_name) as sidecar:
        yield sidecar


def test_two_relays_share_the_shards_and_a_killed_one_is_replaced_within_ten_seconds(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.env["OUTBOXKIT_RELAY_SHARDS"] = "4"
    first = sidecar.start(OUTBOXKIT_RELAY_MAX_SHARDS="2")
    first.wait_for("took the lease", 2)
    second = sidecar.start()
    try:
        second.wait_for("took the lease", 2)
        sidecar.write(100, groups=10)
        wait_for_records(kafka, sidecar.topic, 100, timeout=60)
        assert first.count("committed Kafka transaction") > 0
        assert second.count("committed Kafka transaction") > 0  # both published: two shards each

        first.kill()
        killed = time.monotonic()
        sidecar.write(50, first=100, groups=10)
        wait_for_records(kafka, sidecar.topic, 150, timeout=60)
        handover = time.monotonic() - killed
        print(f"handover after the kill: {handover:.1f}s")
        assert second.count("took the lease") == 4
        assert handover < 10, f"the dead relay's shards were published again after {handover:.1f}s"
    finally:
        first.kill()
        second.kill()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 150, groups=10)


def test_kafka_stopped_for_twenty_seconds_then_restarted_loses_nothing(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    relay = sidecar.start()
    try:
        sidecar.write(30)
        wait_for_records(kafka, sidecar.topic, 30, timeout=60)
        with stopped("kafka"):
            sidecar.write(30, first=30)  # the app goes on committing while the broker is away
            time.sleep(20)
        sidecar.write(30, first=60)
        try:
            wait_for_records(kafka, sidecar.topic, 90, timeout=120)
        except AssertionError:
            print("".join(line for line in relay.lines if "outboxkit.relay" in line)[-6000:])
            raise
        relay.signal(signal.SIGTERM)
        assert relay.wait(60) == ExitCode.OK
    finally:
        relay.kill()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 90)


def status(sidecar: Sidecar) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "outboxkit.cli", "relay", "status", "--json"],
        env=sidecar.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_status_shows_the_backlog_its_age_and_who_holds_each_shard(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.env["OUTBOXKIT_RELAY_SHARDS"] = "2"
    sidecar.write(20)
    before = status(sidecar)
    assert before["backlog"] == 20
    assert all(shard["lease_holder"] is None for shard in before["shards"])
    assert all(shard["oldest_unpublished"] is not None for shard in before["shards"] if shard["backlog"])

    relay = sidecar.start()
    try:
        wait_for_records(kafka, sidecar.topic, 20, timeout=60)
        during = status(sidecar)
        assert during["backlog"] == 0
        assert all(shard["lease_holder"].endswith(f":{relay.process.pid}") for shard in during["shards"])
        assert all("id" in shard["checkpoint"] for shard in during["shards"])
    finally:
        relay.kill()
    assert [shard["lease_holder"] for shard in status(sidecar)["shards"]] == [None, None]


def seconds_until_published(kafka: KafkaSettings, sidecar: Sidecar, first: int) -> float:
    sidecar.write(1, first=first)
    started = time.monotonic()
    wait_for_records(kafka, sidecar.topic, first + 1, timeout=30)
    return time.monotonic() - started


def test_a_commit_wakes_an_idle_relay_at_once_instead_of_after_its_poll_interval(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.env["OUTBOXKIT_RELAY_POLL_INTERVAL"] = "6"
    relay = sidecar.start()
    try:
        relay.wait_for("took the lease")
        time.sleep(1)  # idle, waiting for a notification
        woken = [seconds_until_published(kafka, sidecar, n) for n in range(3)]
        sidecar.notify = False
        polled = seconds_until_published(kafka, sidecar, 3)
    finally:
        relay.kill()
    assert max(woken) < 2.0, woken
    assert polled > 2.0  # without the notification it waits for its poll: the test can tell


def test_metrics_and_probes_show_backlog_progress_and_readiness(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sidecar.env |= {"OUTBOXKIT_RELAY_HTTP_PORT": str(port), "OUTBOXKIT_RELAY_POLL_INTERVAL": "0.5"}
    relay = sidecar.start()
    try:
        relay.wait_for("took the lease")
        deadline = time.monotonic() + 30
        while get(port, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/nothing")[0] == 404

        sidecar.write(12)
        wait_for_records(kafka, sidecar.topic, 12, timeout=30)
        status_code, text = get(port, "/metrics")
        assert status_code == 200
        assert metric(text, "outboxkit_relay_published_total") == 12
        assert metric(text, "outboxkit_relay_shards_held") == 1
        assert metric(text, "outboxkit_relay_backlog_events") == 0
        assert metric(text, "outboxkit_relay_commit_seconds_total") > 0
        assert "# TYPE outboxkit_relay_published_total counter" in text
    finally:
        relay.kill()


def test_sigterm_with_the_broker_away_stops_the_relay_within_two_kafka_timeouts(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.env["OUTBOXKIT_RELAY_KAFKA_TIMEOUT"] = "3"
    relay = sidecar.start()
    try:
        sidecar.write(10)
        wait_for_records(kafka, sidecar.topic, 10, timeout=60)
        with stopped("kafka"):
            sidecar.write(10, first=10)
            time.sleep(2)  # its next transaction is now waiting for the broker
            relay.signal(signal.SIGTERM)
            asked = time.monotonic()
            assert relay.wait(30) == ExitCode.OK
            took = time.monotonic() - asked
    finally:
        relay.kill()
    print(f"stopped {took:.1f}s after SIGTERM")
    assert took < 2 * 3 + 5  # two Kafka timeouts, and the close's flush
    sidecar.drain()
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 20)


def test_a_relay_started_while_postgresql_is_away_waits_for_it_and_publishes_everything(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    sidecar.write(30)
    url = make_url(sidecar.env["OUTBOXKIT_RELAY_DATABASE_URL"])
    postgres_later = Forwarder((url.host or "127.0.0.1", url.port or 5432))
    away = url.set(port=postgres_later.port).render_as_string(hide_password=False)
    relay = subprocess.Popen(
        [sys.executable, "-m", "outboxkit.cli", "relay", "run", "--drain"],
        env=sidecar.env | {"OUTBOXKIT_RELAY_DATABASE_URL": away},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        assert relay.poll() is None, f"the relay did not wait for PostgreSQL: {relay.communicate()[1]}"
        postgres_later.open()
        _, stderr = relay.communicate(timeout=120)
    finally:
        postgres_later.close()

    assert relay.returncode == ExitCode.OK, stderr
    assert "cannot reach the database for leases" in stderr
    assert_exactly_once_in_commit_order(committed_records(kafka, sidecar.topic), 30)


def served(sidecar: Sidecar, **env: str) -> tuple[RelayProcess, int]:
    """A relay of `sidecar` serving its metrics and probes; with its port."""
    port = free_port()
    return sidecar.start(OUTBOXKIT_RELAY_HTTP_PORT=str(port), **env), port


def test_the_probes_answer_at_once_while_the_backlog_query_waits_for_seconds(
    kafka: KafkaSettings, sidecar: Sidecar
) -> None:
    relay, port = served(sidecar)
    metrics: list[tuple[int, str]] = []
    try:
        wait_until_probe(port, "/readyz", 200)
        with sidecar.app.connect() as locker:  # the backlog's count(*) waits on this lock, for real
            locker.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
            scrape = threading.Thread(target=lambda: metrics.append(get(port, "/metrics", timeout=120)))
            scrape.start()
            time.sleep(2)
            assert scrape.is_alive(), f"/metrics did not wait for the lock: {metrics}"
            liveness, readiness = fastest_answer(port, "/healthz"), fastest_answer(port, "/readyz")
            assert scrape.is_alive(), "the lock was given up before the probes were measured"
            locker.rollback()
        scrape.join(60)
    finally:
        relay.kill()
    print(f"fastest /healthz {liveness * 1000:.1f} ms, /readyz {readiness * 1000:.1f} ms")
    assert liveness < 0.05
    assert readiness < 0.05
    [(status_code, text_)] = metrics
    assert status_code == 200
    assert metric(text_, "outboxkit_relay_backlog_events") == 0


def test_the_relay_is_not_ready_while_its_database_is_unreachable_and_live_all_along(
    sidecar: Sidecar,
) -> None:
    url = make_url(sidecar.env["OUTBOXKIT_RELAY_DATABASE_URL"])
    database = Forwarder((url.host or "127.0.0.1", url.port or 5432))
    database.open()
    relay, port = served(
        sidecar,
        OUTBOXKIT_RELAY_DATABASE_URL=url.set(port=database.port).render_as_string(hide_password=False),
    )
    try:
        wait_until_probe(port, "/readyz", 200)
        database.close()
        body = wait_until_probe(port, "/readyz", 503)
        assert body.startswith("not ready: "), body
        # and it stays so once the relay has lost its leases and stands by (a standby is ready)
        seen = probes_until(port, lambda: relay.count("cannot reach the database for leases") >= 1)
        seen += [(get(port, "/healthz")[0], get(port, "/readyz")[0]) for _ in range(10)]
        assert set(seen) == {(200, 503)}, seen
        assert metric(get(port, "/metrics")[1], "outboxkit_relay_ready") == 0
        database.open()
        wait_until_probe(port, "/readyz", 200)
    finally:
        relay.kill()
        database.close()


def test_with_kafka_unreachable_the_relay_stays_live_says_not_ready_and_never_lies_ready(
    sidecar: Sidecar,
) -> None:
    """The sidecar's probes are liveness and startup, both /healthz (k8s/README.md): they must
    stay 200, so the app pod stays ready; /readyz and the ready gauge tell the truth."""
    relay, port = served(
        sidecar,
        OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        OUTBOXKIT_RELAY_START_TIMEOUT="0",  # as in Kubernetes: waits for as long as it takes
    )
    try:
        wait_until_probe(port, "/healthz", 200, timeout=30)
        seen = probes_until(port, lambda: relay.count("cannot start publishing") >= 2, timeout=180)
        assert metric(get(port, "/metrics")[1], "outboxkit_relay_ready") == 0
        body = get(port, "/readyz")[1]
    finally:
        relay.kill()
    assert {liveness for liveness, _ in seen} == {200}, seen
    assert {readiness for _, readiness in seen} == {503}, seen
    assert "Kafka is unreachable" in body, body


def test_status_and_a_metric_warn_of_shards_no_relay_holds(kafka: KafkaSettings, sidecar: Sidecar) -> None:
    sidecar.env |= {"OUTBOXKIT_RELAY_SHARDS": "3", "OUTBOXKIT_RELAY_MAX_SHARDS": "2"}
    relay, port = served(sidecar)
    second: RelayProcess | None = None
    try:
        relay.wait_for("took the lease", times=2)
        assert status(sidecar)["unheld"] == ["shard 3/3"]
        shown = subprocess.run(
            [sys.executable, "-m", "outboxkit.cli", "relay", "status"],
            env=sidecar.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        deadline = time.monotonic() + 30
        while metric(get(port, "/metrics")[1], "outboxkit_relay_shards_unheld") != 1:
            assert time.monotonic() < deadline, "the unheld shard never showed in the metric"
            time.sleep(0.2)
        second = sidecar.start()  # one more relay: every shard held, no warning
        second.wait_for("took the lease")
        assert status(sidecar)["unheld"] == []
    finally:
        relay.kill()
        if second is not None:
            second.kill()
    assert "WARNING: 1 of 3 shard(s) held by no relay" in shown, shown


def test_a_kafka_call_retried_while_the_broker_is_away_keeps_the_relay_live_and_unready() -> None:
    """A commit retried for as long as an outage lasts must not look like a hung loop (liveness
    would restart the sidecar for nothing); each retry says it to the health flags."""
    waited: list[str] = []
    give_up = time.monotonic() + 30  # unheard retries would otherwise go on for ever
    publisher = TransactionalPublisher(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        "outboxkit-relay.nobody",
        timeout=1,
        stopping=lambda: len(waited) >= 2 or time.monotonic() > give_up,
        waiting=waited.append,
    )
    with pytest.raises(RelayError):
        publisher.start()
    assert len(waited) == 2, waited
    assert all(why.startswith("Kafka init_transactions retried") for why in waited), waited
