"""The machine a figure was taken on: cores, versions, and how fast the disk syncs.

Commit-bound figures (B1 above all) follow the disk's sync rate more than anything in outboxkit,
so it is measured with PostgreSQL's own `pg_test_fsync` (one 8 kB write then fdatasync, the WAL's
default method) in the checkout's directory — on this kit's machines the same disk as the data
of the local services.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from functools import cache
from glob import glob
from importlib.metadata import version
from pathlib import Path

import confluent_kafka
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
FDATASYNC = re.compile(r"^\s*fdatasync\s+([\d.]+) ops/sec")


@cache
def host_facts() -> dict[str, object]:
    """Facts that stay put during a run (measured once per process)."""
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent_kafka": version("confluent-kafka"),
        "kafka_local_build": _local_kafka_version(),
        "fdatasync_per_s": fdatasync_rate(ROOT),
    }


def describe(facts: dict[str, object]) -> str:
    """One line for the printed report."""
    return (
        f"host: {facts['cores']} cores, Python {facts['python']}, SQLAlchemy {facts['sqlalchemy']}, "
        f"librdkafka {facts['librdkafka']}, local Kafka {facts['kafka_local_build']}, "
        f"fdatasync {facts['fdatasync_per_s']}/s (pg_test_fsync, one 8 kB write)"
    )


def fdatasync_rate(directory: Path) -> float | str:
    """8 kB write + fdatasync per second in `directory`, or why it could not be measured."""
    installed = sorted(glob("/usr/lib/postgresql/*/bin/pg_test_fsync"))
    binary = shutil.which("pg_test_fsync") or (installed[-1] if installed else None)
    if binary is None:
        return "n/a: pg_test_fsync not found"
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        command = [binary, "-s", "1", "-f", str(Path(scratch) / "fsync.test")]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as test:  # noqa: S603 - fixed
            assert test.stdout is not None
            for line in test.stdout:  # the first fdatasync line is all we need: stop there
                if match := FDATASYNC.match(line):
                    test.terminate()
                    return round(float(match.group(1)))
    return "n/a: pg_test_fsync printed no fdatasync rate"


def _local_kafka_version() -> str:
    """The broker version scripts/services resolves (what the local figures ran against)."""
    pom = (ROOT / "services" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return found.group(1) if found else "unknown"
