"""What an operator sees: every `outboxkit` command, run as a process, fails with one line naming
the setting behind the failure and the exit code the README documents (2: invalid settings, 1: a
service that does not answer), never a traceback; an unreachable Kafka is said once in our words
instead of librdkafka's stream of reconnect errors; the metrics and health endpoints listen where
they are told to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.kafka import KafkaSettings
from tests.processes import ROOT, Forwarder, free_port, get, listening, outboxkit

CLOSED = f"127.0.0.1:{free_port()}"  # nothing listens here: a service that is away
PG_AWAY = f"postgresql+psycopg://outboxkit@{CLOSED}/outboxkit"


def one_line_failure(result: subprocess.CompletedProcess[str], code: int, *settings: str) -> str:
    """The command failed with `code` and exactly one line on stderr, naming every one of `settings`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert all(setting in lines[0] for setting in settings), lines[0]
    return lines[0]


@pytest.fixture
def sink_env(new_topic: Callable[..., str], tmp_path: Path, kafka: KafkaSettings) -> dict[str, str]:
    return {
        "OUTBOXKIT_SINK_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "OUTBOXKIT_SINK_TABLES": json.dumps([{"topic": new_topic(), "table": "orders"}]),
        "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
    }


@pytest.fixture
def verify_env(new_topic: Callable[..., str], kafka: KafkaSettings) -> dict[str, str]:
    return {
        "OUTBOXKIT_VERIFY_TOPICS": json.dumps([new_topic()]),
        "OUTBOXKIT_VERIFY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
    }


SINK, RELAY, VERIFY = "OUTBOXKIT_SINK_", "OUTBOXKIT_RELAY_", "OUTBOXKIT_VERIFY_"
UNKNOWN_PROPERTY = '{"no.such.property": "1"}'
STATUS = ("sink", "status")


@pytest.mark.parametrize(
    ("command", "env", "code", "setting"),
    [
        (STATUS, {SINK + "WAREHOUSE_URL": PG_AWAY}, 1, SINK + "WAREHOUSE_URL"),
        (("sink", "replay", "--from-offset", "0"), {SINK + "WAREHOUSE_URL": PG_AWAY}, 1,
         SINK + "WAREHOUSE_URL"),
        (STATUS, {SINK + "WAREHOUSE_URL": "mysqlx://a@b/c"}, 2, SINK + "WAREHOUSE_URL"),
        (("sink", "run"), {SINK + "WAREHOUSE_URL": "sqlite:///w.db"}, 2, SINK + "WAREHOUSE_URL"),
        (("sink", "skip", "--topic", "t", "--partition", "0", "--to-offset", "1"),
         {SINK + "WAREHOUSE_URL": "postgresql://etl@db:port/w"}, 2, SINK + "WAREHOUSE_URL"),
        (STATUS, {SINK + "KAFKA__CONFIG": UNKNOWN_PROPERTY}, 2, SINK + "KAFKA__CONFIG"),
        (("sink", "run"), {SINK + "KAFKA__CONFIG": UNKNOWN_PROPERTY}, 2, SINK + "KAFKA__CONFIG"),
        (STATUS, {SINK + "TABLES": "[{'topic': 'single quotes'}]"}, 2, SINK + "TABLES"),
        (("sink", "run"), {SINK + "TABLES": '[{"topic": "no.table"}]'}, 2, SINK + "TABLES[0]['table']"),
        (STATUS, {SINK + "KAFKA__BOOTSTRAP_SERVERS": CLOSED}, 1, SINK + "KAFKA__BOOTSTRAP_SERVERS"),
        (("sink", "replay", "--topic", "typo", "--from-offset", "0"), {}, 2, SINK + "TABLES"),
        (("sink", "skip", "--topic", "typo", "--partition", "0", "--to-offset", "1"), {}, 2, SINK + "TABLES"),
    ],
)  # fmt: skip
def test_a_sink_command_that_cannot_work_says_so_in_one_line_naming_the_setting(
    sink_env: dict[str, str], command: tuple[str, ...], env: dict[str, str], code: int, setting: str
) -> None:
    one_line_failure(outboxkit(*command, env=sink_env | env), code, setting)


@pytest.mark.parametrize(
    ("env", "code", "setting"),
    [
        ({VERIFY + "APP_DATABASE_URL": PG_AWAY}, 1, VERIFY + "APP_DATABASE_URL"),
        ({VERIFY + "WAREHOUSE_URL": "nosuchdb://x/y"}, 2, VERIFY + "WAREHOUSE_URL"),
        ({VERIFY + "KAFKA__CONFIG": UNKNOWN_PROPERTY}, 2, VERIFY + "KAFKA__CONFIG"),
        ({VERIFY + "KAFKA__BOOTSTRAP_SERVERS": CLOSED}, 1, VERIFY + "KAFKA__BOOTSTRAP_SERVERS"),
    ],
)
def test_verify_that_cannot_check_says_so_in_one_line_naming_the_setting(
    verify_env: dict[str, str], env: dict[str, str], code: int, setting: str
) -> None:
    one_line_failure(outboxkit("verify", env=verify_env | env), code, setting)


@pytest.mark.parametrize(
    ("command", "env", "code", "setting"),
    [
        (("relay", "status"), {RELAY + "DATABASE_URL": PG_AWAY}, 1, RELAY + "DATABASE_URL"),
        (("relay", "status"), {RELAY + "DATABASE_URL": "mysqlx://a@b/c"}, 2, RELAY + "DATABASE_URL"),
        (("relay", "run"), {RELAY + "DATABASE_URL": "postgresql://app@db:abc/shop"}, 2,
         RELAY + "DATABASE_URL"),
        (("relay", "run"), {RELAY + "LEASE_TIMEOUT": "1"}, 2, RELAY + "LEASE_TIMEOUT"),
        (("relay", "run"), {RELAY + "KAFKA__CONFIG": UNKNOWN_PROPERTY}, 2, RELAY + "KAFKA__CONFIG"),
        (("relay", "run"), {RELAY + "SHARDS": "2"}, 2, RELAY + "SHARDS=1"),  # SQLite: one relay
        (("relay", "status"), {RELAY + "SHARDS": "2"}, 2, RELAY + "SHARDS=1"),
        (("chaos", "--seconds", "1"), {"OUTBOXKIT_CHAOS_PG_URL": PG_AWAY}, 1, "OUTBOXKIT_CHAOS_PG_URL"),
        (("demo", "--seconds", "1", "--app-db", "postgres"), {"OUTBOXKIT_DEMO_PG_URL": PG_AWAY}, 1,
         "OUTBOXKIT_DEMO_PG_URL"),
    ],
)  # fmt: skip
def test_the_other_commands_fail_in_one_line_naming_the_setting(
    command: tuple[str, ...], env: dict[str, str], code: int, setting: str, tmp_path: Path
) -> None:
    app = {RELAY + "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}"}
    one_line_failure(outboxkit(*command, env=app | env), code, setting)


def without(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`outboxkit <args>` in an install that lacks `module` (its import fails as a missing one does)."""
    run = f"import sys; sys.modules[{module!r}] = None\nfrom outboxkit.cli import main\n"
    run += f"sys.exit(main({args!r}))"
    return subprocess.run(
        [sys.executable, "-c", run],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "command", "extras"),
    [
        ("duckdb", ("sink", "run"), "sink,duckdb"),
        ("orjson", ("sink", "status"), "sink,duckdb"),
        ("confluent_kafka", ("relay", "run"), "relay"),
        ("confluent_kafka", ("verify",), "sink,duckdb"),
    ],
)
def test_a_command_whose_extra_is_not_installed_names_the_extra(
    module: str, command: tuple[str, ...], extras: str, sink_env: dict[str, str]
) -> None:
    line = one_line_failure(without(module, *command, env=sink_env), 2, f"pip install 'outboxkit[{extras}]'")
    assert line.startswith(f"outboxkit {' '.join(command)}: {module} is not installed"), line


def test_an_app_on_postgresql_without_psycopg_is_told_how_to_wake_the_relay() -> None:
    """The app library's base install has no psycopg: the first write that would wake the relay
    fails before its commit, saying what to install or how to do without."""
    write = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from sqlalchemy import create_engine\nfrom sqlalchemy.orm import Session\n"
        "from outbox.wakeup import wrote_events\n"
        f"engine = create_engine({PG_AWAY.replace('+psycopg', '+psycopg2')!r})\n"
        "wrote_events(Session(engine), engine)"
    )
    done = subprocess.run(
        [sys.executable, "-c", write], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert (
        "outbox.errors.ConfigurationError: waking the relay after commits on PostgreSQL needs psycopg 3"
        in (done.stderr)
    ), done.stderr
    assert "pip install 'outboxkit[postgres]', or set OUTBOXKIT_OUTBOX_NOTIFY_CHANNEL=''" in done.stderr


def test_migrate_names_its_url_flag() -> None:
    one_line_failure(outboxkit("migrate", "--url", PG_AWAY, env={}), 1, "--url", "Connection refused")
    refused = outboxkit("migrate", "--url", "postgresql://app@db:abc/shop", env={})
    assert refused.returncode == 2
    assert "argument --url: not a database URL" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_migrate_without_a_url_names_the_variable_and_hides_a_bad_one() -> None:
    one_line_failure(outboxkit("migrate", env={}), 2, "OUTBOXKIT_MIGRATE_URL", "Field required")
    bad = outboxkit("migrate", env={"OUTBOXKIT_MIGRATE_URL": "postgresql://app:s3cret@db:abc/shop"})
    line = one_line_failure(bad, 2, "OUTBOXKIT_MIGRATE_URL", "not a database URL")
    assert "s3cret" not in line


def test_json_numbers_and_booleans_in_the_kafka_config_are_taken(sink_env: dict[str, str]) -> None:
    config = {
        "socket.timeout.ms": 6000,
        "enable.partition.eof": False,
        "topic.metadata.refresh.interval.ms": 5e4,
    }
    status = outboxkit("sink", "status", env=sink_env | {"OUTBOXKIT_SINK_KAFKA__CONFIG": json.dumps(config)})
    assert status.returncode == 0, status.stderr
    assert "0 record(s) behind" in status.stdout


def kafka_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " outboxkit.kafka: " in line]


class Running:
    """`outboxkit <command>` as a process, its stderr in a file so a test can wait for a line."""

    def __init__(self, *command: str, env: dict[str, str], stderr: Path) -> None:
        self._stderr = stderr
        with stderr.open("w") as sink:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "outboxkit.cli", *command],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )

    def wait_for(self, text: str, cap: float = 120) -> None:
        """Until `text` is in stderr: as long as a busy machine needs, failing only after `cap`."""
        deadline = time.monotonic() + cap
        while text not in self._stderr.read_text():
            assert self._process.poll() is None, self._stderr.read_text()
            assert time.monotonic() < deadline, f"no {text!r} in {cap} s:\n{self._stderr.read_text()}"
            time.sleep(0.2)

    def stop(self) -> str:
        """SIGTERM, then its whole stderr."""
        self._process.send_signal(signal.SIGTERM)
        self._process.wait(60)
        return self._stderr.read_text()


def test_a_sink_without_kafka_says_so_once_instead_of_librdkafkas_reconnect_stream(
    sink_env: dict[str, str], tmp_path: Path
) -> None:
    env = os.environ | sink_env | {"OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": CLOSED}
    sink = Running("sink", "run", env=env, stderr=tmp_path / "stderr")
    sink.wait_for(f"Kafka is unreachable at {CLOSED}")
    time.sleep(8)  # librdkafka retries the whole time: what it logs meanwhile is bounded
    stderr = sink.stop()

    said = [line for line in stderr.splitlines() if f"Kafka is unreachable at {CLOSED}" in line]
    assert len(said) == 1, stderr
    assert len(kafka_lines(stderr)) <= 4, stderr  # it was about 20 a second


def test_sink_status_without_kafka_answers_in_one_line(sink_env: dict[str, str]) -> None:
    status = outboxkit("sink", "status", env=sink_env | {"OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": CLOSED})
    line = one_line_failure(status, 1, "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS", CLOSED)
    assert "Kafka is unreachable" in line


def test_a_sink_says_once_that_kafka_answers_again(
    sink_env: dict[str, str], kafka: KafkaSettings, tmp_path: Path
) -> None:
    host, port = kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)
    kafka_later = Forwarder((host, int(port)))
    bootstrap = f"127.0.0.1:{kafka_later.port}"
    env = os.environ | sink_env | {"OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": bootstrap}
    sink = Running("sink", "run", env=env, stderr=tmp_path / "stderr")
    try:
        sink.wait_for(f"Kafka is unreachable at {bootstrap}")
        kafka_later.open()
        sink.wait_for(f"Kafka at {bootstrap} answers again")
    finally:
        stderr = sink.stop()
        kafka_later.close()

    assert sum(f"Kafka is unreachable at {bootstrap}" in line for line in stderr.splitlines()) == 1, stderr
    assert sum(f"Kafka at {bootstrap} answers again" in line for line in stderr.splitlines()) == 1, stderr


def test_the_metrics_and_health_endpoints_listen_only_on_the_address_they_are_given(
    sink_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = (
        os.environ
        | sink_env
        | {"OUTBOXKIT_SINK_HTTP_PORT": str(port), "OUTBOXKIT_SINK_HTTP_HOST": "127.0.0.1"}
    )
    sink = Running("sink", "run", env=env, stderr=tmp_path / "stderr")
    try:
        deadline = time.monotonic() + 120
        while not listening(port):
            assert time.monotonic() < deadline, "the sink never served its endpoints"
            time.sleep(0.2)
        assert listening(port) == {"127.0.0.1"}
        assert get(port, "/healthz") == (200, "ok\n")
    finally:
        sink.stop()


@pytest.mark.parametrize(
    ("role", "env"),
    [("sink", {SINK + "WAREHOUSE_URL": PG_AWAY}), ("relay", {RELAY + "DATABASE_URL": PG_AWAY})],
)
def test_a_process_whose_database_never_answers_gives_up_after_its_start_timeout(
    sink_env: dict[str, str], role: str, env: dict[str, str]
) -> None:
    prefix = f"OUTBOXKIT_{role.upper()}_"
    started = time.monotonic()
    done = outboxkit(role, "run", env=sink_env | env | {prefix + "START_TIMEOUT": "2"}, timeout=60)

    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started >= 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"outboxkit {role} run: cannot use the database at {prefix}"), last
    assert prefix + "START_TIMEOUT" in last
