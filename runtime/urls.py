"""Database URLs in the processes' settings, checked when the settings load.

A URL that cannot work — unparsable, a port that is not a number, a dialect SQLAlchemy does not
know or one the process cannot use, a driver that is not installed — is a settings error naming
its field (exit code 2), not a traceback at the first connection. Messages never repeat the URL:
it may hold a password.

And the engines the processes make from them (`engine`): a PostgreSQL that does not answer (a
network partition, a blackholed address) fails a connection attempt within
`CONNECT_TIMEOUT_SECONDS`, instead of the kernel's two minutes of SYN retries or, against a peer
that accepts and says nothing, for ever, while a probe, a lease or a shutdown waits on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from pydantic import SecretStr
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError


def usable_url(*dialects: str) -> Callable[[SecretStr], SecretStr]:
    """A pydantic validator: the URL must parse and load, and its dialect be one of `dialects`."""

    def check(url: SecretStr) -> SecretStr:
        parsed_url(url.get_secret_value(), dialects)
        return url

    return check


def parsed_url(text: str, dialects: tuple[str, ...] = ()) -> URL:
    """`text` as a SQLAlchemy URL whose dialect and driver load; a ValueError says what is wrong."""
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise ValueError(
            f"not a database URL ({exc}); expected e.g. postgresql+psycopg://user@host:5432/db"
        ) from None
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"unknown database scheme {url.drivername!r}") from None
    if dialects and dialect.name not in dialects:
        raise ValueError(f"{dialect.name} is not supported here; use {' or '.join(dialects)}")
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ValueError(
            f"the {dialect.driver} driver of {url.drivername!r} is not installed ({exc}); install it or "
            "name an installed one (postgresql+psycopg://, sqlite://, duckdb://)"
        ) from None
    return url


CONNECT_TIMEOUT_SECONDS: Final = 10  # libpq's connect_timeout, unless the URL sets its own


def engine(url: str | URL, **kwargs: Any) -> Engine:
    """`create_engine(url, **kwargs)`, with PostgreSQL connections that give up connecting after
    `CONNECT_TIMEOUT_SECONDS` (or the URL's `?connect_timeout=`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            **kwargs.get("connect_args", {}),
        }
    return create_engine(parsed, **kwargs)


def connect_timeout(url: URL) -> int:
    """The connect timeout for a connection made by hand to `url`'s server (replication, LISTEN)."""
    given = url.query.get("connect_timeout")
    return int(given if isinstance(given, str) else CONNECT_TIMEOUT_SECONDS)
