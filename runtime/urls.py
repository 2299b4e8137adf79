"""Database URLs in the processes' settings, checked when the settings load.

A URL that cannot work — unparsable, a port that is not a number, a dialect SQLAlchemy does not
know or one the process cannot use, a driver that is not installed — is a settings error naming
its field (exit code 2), not a traceback at the first connection. Messages never repeat the URL:
it may hold a password.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr
from sqlalchemy import URL, make_url
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
