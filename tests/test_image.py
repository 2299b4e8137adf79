"""The image as Kubernetes runs it: the relay, the sink and the jobs dispatcher as containers of
`make image`'s image.

Each container runs as uid 10001 on a read-only root filesystem (only /tmp is writable, as with an
emptyDir), with every capability dropped and no-new-privileges, on the host's network, against the
suite's Kafka and PostgreSQL. The app writes events with the outbox library; they must arrive in
the warehouse, `outboxkit verify` must pass, and `podman stop` (SIGTERM, then SIGKILL after the
grace period) must end each container with exit code 0 before the grace period is out.

The image comes from `scripts/image build`, cached: the first build of a machine takes minutes.
This test never skips: a machine where podman cannot build or run the image fails it, saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
import redis
from sqlalchemy import create_engine, make_url
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings
from runtime.kafka import KafkaSettings
from tests.conftest import PgSchema
from tests.helpers import rows
from tests.models import Base, Thing
from tests.processes import ROOT, outboxkit
from tests.test_jobs_dispatch import job_envelope, produce_in_a_transaction

IMAGE_SCRIPT = ROOT / "scripts" / "image"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
UID = 10001
GRACE = 30  # seconds `podman stop` waits after SIGTERM before it kills
EVENTS = 300
JOBS = 200
# podman's default ulimits exceed what this machine's hard limits allow a container (runc refuses)
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
HARDENED = [
    "--network=host", "--read-only", "--read-only-tmpfs=false", "--tmpfs=/tmp:rw,size=64m",
    "--cap-drop=ALL", "--security-opt=no-new-privileges", *LIMITS,
]  # fmt: skip


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """podman on the image store scripts/image builds into."""
    return subprocess.run(
        [sys.executable, str(IMAGE_SCRIPT), "podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def image() -> str:
    """The image of these sources, built (or found current) by the cached script."""
    built = subprocess.run(
        [sys.executable, str(IMAGE_SCRIPT), "build"],
        capture_output=True,
        text=True,
        timeout=3000,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(
            f"scripts/image build failed; this test needs podman and root:\n{built.stderr}", pytrace=False
        )
    return built.stdout.strip().splitlines()[-1]


@dataclass
class Container:
    name: str

    def state(self, field: str) -> str:
        done = podman("inspect", "--format", f"{{{{.State.{field}}}}}", self.name)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def logs(self) -> str:
        done = podman("logs", self.name)
        return done.stdout + done.stderr

    def uid(self) -> int:
        """The real uid of the container's main process, as the host's kernel sees it."""
        status = Path(f"/proc/{self.state('Pid')}/status").read_text()
        [line] = [line for line in status.splitlines() if line.startswith("Uid:")]
        return int(line.split()[1])

    def stop(self) -> tuple[int, float]:
        """SIGTERM, SIGKILL after GRACE seconds: the exit code and how long it took."""
        started = time.monotonic()
        done = podman("stop", "-t", str(GRACE), self.name, timeout=GRACE + 60)
        assert done.returncode == 0, done.stderr
        return int(self.state("ExitCode")), time.monotonic() - started


@pytest.fixture
def run_container(image: str) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(env: dict[str, str], *command: str) -> Container:
        name = f"outboxkit-test-{uuid.uuid4().hex[:10]}"
        variables = [arg for item in env.items() for arg in ("--env", "=".join(item))]
        done = podman("run", "--detach", "--name", name, *HARDENED, *variables, image, *command)
        assert done.returncode == 0, f"podman run failed:\n{done.stderr}"
        container = Container(name)
        started.append(container)
        assert container.state("Running") == "true", container.logs()
        return container

    yield start
    for container in started:
        podman("rm", "--force", "--time", "0", container.name)


def search_path_url(schema: PgSchema) -> str:
    return make_url(schema.url).update_query_dict(schema.connect_args).render_as_string(hide_password=False)


def write(schema: PgSchema, topic: str, count: int) -> None:
    """`count` committed transactions of the app, one new thing each, over five keys."""
    app = create_engine(schema.url, connect_args=schema.connect_args)
    outbox.metadata.create_all(app)
    Base.metadata.create_all(app)
    settings = OutboxSettings(topic_template=topic)
    for n in range(count):
        with Session(app, info={SETTINGS_KEY: settings}) as session, session.begin():
            session.add(Thing(group=f"g{n % 5}", n=n))
    app.dispose()


def until(condition: Callable[[], bool], what: str, cap: float = 240) -> None:
    """Wait for `condition` (a progress condition, not a timing claim); fail after a generous cap."""
    deadline = time.monotonic() + cap
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {cap}s"
        time.sleep(0.5)


@pytest.mark.timeout(3600)  # the first build of a machine: debootstrap and the dependencies
def test_relay_and_sink_containers_deliver_every_event_and_stop_cleanly_on_sigterm(
    kafka: KafkaSettings,
    pg_schema: PgSchema,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    run_container: Callable[..., Container],
) -> None:
    topic, url = new_topic(3), search_path_url(pg_schema)  # the warehouse's tables beside the app's
    write(pg_schema, topic, EVENTS)

    relay = run_container(
        {
            "OUTBOXKIT_RELAY_DATABASE_URL": url,
            "OUTBOXKIT_RELAY_SOURCE_ID": unique_name("src"),
            "OUTBOXKIT_RELAY_CHECKPOINT_TOPIC": unique_name("ckpt"),
            "OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        },
        "relay", "run",
    )  # fmt: skip
    sink = run_container(
        {
            "OUTBOXKIT_SINK_WAREHOUSE_URL": url,
            "OUTBOXKIT_SINK_GROUP_ID": unique_name("g"),
            "OUTBOXKIT_SINK_TABLES": json.dumps([{"topic": topic, "table": "log", "mode": "append"}]),
            "OUTBOXKIT_SINK_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        },
        "sink", "run",
    )  # fmt: skip
    assert (relay.uid(), sink.uid()) == (UID, UID)

    def landed() -> bool:
        assert relay.state("Running") == sink.state("Running") == "true", relay.logs() + sink.logs()
        try:
            return rows(url, "SELECT count(*) FROM log") == [(EVENTS,)]
        except Exception:  # the sink has not created its table yet
            return False

    until(landed, f"{EVENTS} events in the warehouse")

    verified = outboxkit(
        "verify",
        env={
            "OUTBOXKIT_VERIFY_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "OUTBOXKIT_VERIFY_TOPICS": json.dumps([topic]),
            "OUTBOXKIT_VERIFY_APP_DATABASE_URL": url,
            "OUTBOXKIT_VERIFY_WAREHOUSE_URL": url,
            "OUTBOXKIT_VERIFY_LOG_TABLE": "log",
        },
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr

    for container in (relay, sink):
        code, took = container.stop()
        assert code == 0, f"{container.name} exited {code}:\n{container.logs()}"
        assert took < GRACE, f"{container.name} took {took:.1f}s, so SIGKILL ended it, not its SIGTERM"


@pytest.mark.timeout(3600)  # as above: the first build of a machine
def test_the_jobs_dispatcher_container_delivers_every_job_and_stops_cleanly_on_sigterm(
    kafka: KafkaSettings,
    new_topic: Callable[..., str],
    unique_name: Callable[[str], str],
    redis_url: str,
    run_container: Callable[..., Container],
) -> None:
    topic, queue = new_topic(2), unique_name("q")
    jobs = [job_envelope(topic, queue, n) for n in range(JOBS)]
    produce_in_a_transaction(kafka, topic, jobs)
    dispatcher = run_container(
        {
            "OUTBOXKIT_JOBS_BROKER_URL": redis_url,
            "OUTBOXKIT_JOBS_TOPIC": topic,
            "OUTBOXKIT_JOBS_GROUP_ID": unique_name("g"),
            "OUTBOXKIT_JOBS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        },
        "jobs", "dispatch",
    )  # fmt: skip
    assert dispatcher.uid() == UID
    client = redis.Redis.from_url(redis_url)

    def delivered() -> set[str]:
        assert dispatcher.state("Running") == "true", dispatcher.logs()
        return {dramatiq.Message.decode(entry).message_id for entry in client.hvals(f"dramatiq:{queue}.msgs")}

    try:
        until(lambda: delivered() == {job.event_id for job in jobs}, f"{JOBS} jobs in Redis")
        code, took = dispatcher.stop()
    finally:
        client.delete(f"dramatiq:{queue}", f"dramatiq:{queue}.msgs")
        client.close()
    assert code == 0, f"the dispatcher exited {code}:\n{dispatcher.logs()}"
    assert took < GRACE, f"it took {took:.1f}s, so SIGKILL ended it, not its SIGTERM"


def test_both_builds_ship_every_package_pyproject_declares() -> None:
    """A new package left out of the image's sources imports in the tests and fails in the container
    (seen: `jobs`, added with the dispatcher)."""
    declared = {name.rstrip("*") for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    script = re.search(r"^SOURCES = \[(.*)\]$", IMAGE_SCRIPT.read_text(), re.M)
    assert script is not None
    assert declared <= set(re.findall(r'"([^"]+)"', script.group(1)))
    copied = set(re.findall(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert declared <= copied
