"""Helpers for tests that run outboxkit as OS processes or take a service away under it."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def services(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def outboxkit(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`outboxkit <args>` as a process of this checkout, with `env` added; its outcome, output kept."""
    return subprocess.run(
        [sys.executable, "-m", "outboxkit.cli", *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def stopped(service: str) -> Iterator[None]:
    """The `scripts/services` instance of `service` is down for the block, and up again after."""
    external = {"kafka": "OUTBOXKIT_KAFKA_BOOTSTRAP", "postgres": "OUTBOXKIT_PG_URL"}[service]
    if external in os.environ:
        pytest.skip(f"{service} is external: this test stops and starts the one scripts/services runs")
    services("down", service)
    try:
        yield
    finally:
        services("up", service)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str) -> float:
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)
