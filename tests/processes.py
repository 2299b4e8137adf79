"""Helpers for tests that run outboxkit as OS processes or take a service away under it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
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
    _expect_local(service)
    services("down", service)
    try:
        yield
    finally:
        services("up", service)


@contextmanager
def stopping(service: str) -> Iterator[Future[None]]:
    """The `scripts/services` instance of `service` is being stopped while the block runs (its
    `down` in a thread: the future's result fails if it did not stop); up again after the block."""
    _expect_local(service)
    with ThreadPoolExecutor(1) as pool:
        down = pool.submit(services, "down", service)
        try:
            yield down
        finally:
            down.exception()  # the block's end waits for the stop (its failure is the block's to judge)
            services("up", service)


def _expect_local(service: str) -> None:
    external = {"kafka": "OUTBOXKIT_KAFKA_BOOTSTRAP", "postgres": "OUTBOXKIT_PG_URL"}[service]
    if external in os.environ:
        pytest.skip(f"{service} is external: this test stops and starts the one scripts/services runs")


def get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def fastest_answer(port: int, path: str, tries: int = 20) -> float:
    """Seconds the quickest of `tries` requests took: the probe's own cost, with the noise of a
    busy machine (other tests, other engineers) taken out."""
    took = []
    for _ in range(tries):
        started = time.perf_counter()
        get(port, path)
        took.append(time.perf_counter() - started)
    return min(took)


def probes_until(port: int, done: Callable[[], bool], timeout: float = 120) -> list[tuple[int, int]]:
    """(/healthz, /readyz) status codes, every 0.2 s until `done()` (at least once)."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        seen.append((get(port, "/healthz")[0], get(port, "/readyz")[0]))
        if done():
            return seen
        assert time.monotonic() < deadline, f"not done within {timeout:.0f}s; probes said {seen[-5:]}"
        time.sleep(0.2)


def wait_until(condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not so within {timeout:.0f}s"
        time.sleep(0.2)


def wait_until_probe(port: int, path: str, status: int, timeout: float = 90) -> str:
    """Block until `path` answers `status` (connection refused counts as not yet); its body."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(OSError):
            code, body = get(port, path)
            if code == status:
                return body
        assert time.monotonic() < deadline, f"{path} did not answer {status} within {timeout:.0f}s"
        time.sleep(0.2)


def metric(text: str, name: str) -> float:
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def free_port() -> int:
    """A loopback port nothing listens on (as long as nobody takes it meanwhile)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> set[str]:
    """The IPv4 addresses a TCP socket of this host listens on at `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


class Forwarder:
    """A TCP forwarder from a loopback port to `target`: a service that is away until `open()`.

    A process pointed at `port` first finds nothing listening there (connection refused, as
    for a service restarting); once opened, every connection is relayed to the real service.
    Closed, it cuts the connections it relays too: the service is gone, as if it had stopped."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._relayed: list[socket.socket] = []

    def open(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            with suppress(OSError):  # wakes the accepting thread, so the port is free at once
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        for end in self._relayed:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self._relayed.clear()

    def _accept(self, server: socket.socket) -> None:
        with suppress(OSError):  # closed
            while True:
                client, _ = server.accept()
                upstream = socket.create_connection(self.target)
                self._relayed += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
