"""A PostgreSQL that does not answer fails a process's connection attempt in bounded time.

The peer here accepts the TCP connection and never says a word, as a half-dead server or a
middlebox can: without libpq's connect_timeout, psycopg would wait on it for ever (a blackholed
address waits out the kernel's SYN retries, about two minutes, the same way).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from runtime import urls


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on loopback that accepts connections and never answers them."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_an_engine_of_the_processes_gives_up_on_a_server_that_never_answers(silent_server: int) -> None:
    engine = urls.engine(f"postgresql+psycopg://outboxkit@127.0.0.1:{silent_server}/outboxkit")
    started = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        engine.connect()
    assert time.monotonic() - started < urls.CONNECT_TIMEOUT_SECONDS * 3  # bounded: it would hang for ever


def test_the_urls_own_connect_timeout_wins(silent_server: int) -> None:
    url = f"postgresql+psycopg://outboxkit@127.0.0.1:{silent_server}/outboxkit?connect_timeout=2"
    assert urls.connect_timeout(make_url(url)) == 2
    started = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"):
        urls.engine(url).connect()
    assert time.monotonic() - started < urls.CONNECT_TIMEOUT_SECONDS


def test_other_databases_are_left_as_they_are() -> None:
    with urls.engine("sqlite://").connect() as conn:
        assert conn.execute(text("select 1")).scalar_one() == 1
