"""`scripts/services`: idempotent set-up of the real services, and clear messages when it cannot.

These run the script as a user would, against state directories and ports of their own, so they
never disturb the services the rest of the suite uses.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "services"
Run = Callable[..., subprocess.CompletedProcess[str]]


def free_port(span: int = 1) -> int:
    """A loopback port that is free now, with its `span - 1` successors (Kafka's controller,
    RabbitMQ's distribution and epmd).

    Drawn from below Linux's ephemeral range (32768+), so no outgoing connection of this or any
    other process can take it between now and the moment a service binds it.
    """
    while True:
        port = random.randrange(20_000, 32_000)
        if all(port_is_free(port + step) for step in range(span)):
            return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Under /var/tmp, not pytest's tmp_path: PostgreSQL runs as another user and must reach it.
    path = Path("/var/tmp") / f"outboxkit-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_env(state_dir: Path) -> dict[str, str]:
    """The environment of an isolated state dir and free ports."""
    shared_cache = Path(os.environ.get("OUTBOXKIT_STATE_DIR", "/var/tmp/outboxkit")) / "cache"
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("OUTBOXKIT_") and key.endswith(("_BOOTSTRAP", "_URL")))  # no external service
    }
    env |= {
        "OUTBOXKIT_STATE_DIR": str(state_dir),
        "OUTBOXKIT_CACHE_DIR": str(os.environ.get("OUTBOXKIT_CACHE_DIR", shared_cache)),
        "OUTBOXKIT_KAFKA_PORT": str(free_port(span=2)),
        "OUTBOXKIT_PG_PORT": str(free_port()),
        "OUTBOXKIT_REDIS_PORT": str(free_port()),
        "OUTBOXKIT_RABBITMQ_PORT": str(free_port(span=3)),
    }
    return env


@pytest.fixture
def services(service_env: dict[str, str]) -> Iterator[Run]:
    """Run scripts/services with an isolated state dir and free ports; `down` everything after."""

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            env=service_env | extra_env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    yield run
    run("down")


def pids_of(state_dir: Path) -> list[int]:
    """Processes whose command line names this state directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
                state = (proc / "stat").read_text().split()[2]
            except OSError:
                continue
            if str(state_dir).encode() in cmdline and state != "Z":
                found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_up_twice_is_a_no_op_and_down_leaves_no_process(services: Run, state_dir: Path) -> None:
    first = services("up")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("started") == 4
    running = sorted(pids_of(state_dir))
    assert running

    second = services("up")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already running") == 4
    assert sorted(pids_of(state_dir)) == running, "the second `up` started or restarted something"

    down = services("down")
    assert down.returncode == 0, down.stderr
    assert pids_of(state_dir) == []
    assert services("status").returncode == 1


@pytest.mark.slow
def test_rabbitmq_listens_on_loopback_only_and_down_leaves_nothing_listening(
    services: Run, service_env: dict[str, str], state_dir: Path
) -> None:
    # epmd's command line does not name the state dir: what must go is every port of RabbitMQ's.
    amqp = int(service_env["OUTBOXKIT_RABBITMQ_PORT"])
    ports = {amqp, amqp + 1, amqp + 2}  # AMQP, the Erlang distribution, epmd

    first = services("up", "rabbitmq")
    assert first.returncode == 0, first.stderr
    assert f"amqp://outboxkit:outboxkit@127.0.0.1:{amqp}/%2F" in first.stdout
    assert listening(ports) == {"127.0.0.1", "::1"}, "something of RabbitMQ's listens beyond loopback"
    again = services("up", "rabbitmq")
    assert "already running" in again.stdout, again.stderr
    assert services("status", "rabbitmq").returncode == 0

    down = services("down", "rabbitmq")
    assert down.returncode == 0, down.stderr
    assert listening(ports) == set()
    assert pids_of(state_dir) == []
    assert services("status", "rabbitmq").returncode == 1


def listening(ports: set[int]) -> set[str]:
    """The local addresses with a listening TCP socket on any of these ports (from /proc)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) in ports:
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
                found.add(socket.inet_ntop(family, words))
    return found


def test_a_taken_port_is_reported_with_the_process_holding_it(services: Run) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = services("up", "redis", OUTBOXKIT_REDIS_PORT=str(port))

    assert result.returncode == 1
    assert f"127.0.0.1:{port} is already in use by pid {os.getpid()}" in result.stderr
    assert "OUTBOXKIT_REDIS_PORT" in result.stderr


def test_missing_java_is_explained(services: Run, tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)

    result = services("up", "kafka", PATH=str(bare), OUTBOXKIT_SERVICES_INSTALL="0")

    assert result.returncode == 1
    assert "Java 17 or newer" in result.stderr
    assert "OUTBOXKIT_SERVICES_INSTALL=0" in result.stderr


def test_unreachable_maven_central_is_explained(services: Run, tmp_path: Path) -> None:
    # Offline with an empty local repository is what a machine cut off from Maven Central sees.
    offline = f"-o -Dmaven.repo.local={tmp_path / 'empty-m2'}"

    result = services(
        "up", "kafka", OUTBOXKIT_CACHE_DIR=str(tmp_path / "cache"), OUTBOXKIT_MAVEN_ARGS=offline
    )

    assert result.returncode == 1
    assert "is Maven Central reachable?" in result.stderr
    assert not list((tmp_path / "cache").glob("kafka-libs-*")), "a failed download left a cache behind"


@pytest.mark.slow
def test_a_stale_kafka_data_dir_fails_with_the_log_tail_and_the_fix(services: Run, state_dir: Path) -> None:
    data = state_dir / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text(
        "version=1\nnode.id=7\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\ndirectory.id=BBBBBBBBBBBBBBBBBBBBBB\n"
    )

    result = services("up", "kafka")

    assert result.returncode == 1
    assert "kafka exited during start-up. Last lines of" in result.stderr
    assert "scripts/services reset kafka" in result.stderr
    assert pids_of(state_dir) == []


def test_unknown_commands_and_services_are_refused(services: Run) -> None:
    assert services("launch").returncode == 2
    result = services("up", "zookeeper")
    assert result.returncode == 2
    assert "unknown service zookeeper" in result.stderr
