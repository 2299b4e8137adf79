"""`outboxkit migrate`: create or upgrade the outbox tables in the application database.

The database URL comes from `OUTBOXKIT_MIGRATE_URL` (in Kubernetes, a Secret's key through
`secretKeyRef`), so its password is in neither the pod spec nor the process list; `--url`, for a
shell, wins when given.
"""

from __future__ import annotations

import argparse
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url

from outboxkit.commands import Commands
from outboxkit.failures import Named
from runtime.process import ExitCode
from runtime.urls import parsed_url, usable_url


class MigrateSettings(BaseSettings):
    """`OUTBOXKIT_MIGRATE_URL`, read only when `--url` is not given."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_MIGRATE_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,  # the URL may hold a password
    )

    url: Annotated[SecretStr, AfterValidator(usable_url())] = Field(
        description="SQLAlchemy URL of the application database (or pass --url)."
    )


def register(commands: Commands) -> None:
    migrate = commands.add_parser(
        "migrate", help="create or upgrade the outbox tables (Alembic, own version table)"
    )
    migrate.add_argument(
        "--url",
        type=_database_url,
        help="SQLAlchemy URL of the application database (default: $OUTBOXKIT_MIGRATE_URL, which keeps "
        "a password out of the process list)",
    )
    migrate.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    migrate.add_argument(
        "--downgrade", action="store_true", help="go down to REVISION instead ('base' drops the tables)"
    )
    migrate.set_defaults(handler=_migrate)


def _database_url(text: str) -> str:
    """`--url`, refused by argparse (exit 2, naming the flag) when it cannot work."""
    try:
        parsed_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _migrate(args: argparse.Namespace, named: Named) -> int:
    from outbox import schema

    url, setting = _url(args, named)
    named.database(setting, url)
    (schema.downgrade if args.downgrade else schema.upgrade)(url, args.revision)
    print(f"outboxkit migrate: the outbox tables are at {args.revision} in {make_url(url)!r}")
    return ExitCode.OK


def _url(args: argparse.Namespace, named: Named) -> tuple[str, str]:
    """The database URL and the setting it came from, as failures name it."""
    if args.url is not None:
        return args.url, "--url"
    settings = named.load(MigrateSettings)
    return settings.url.get_secret_value(), "OUTBOXKIT_MIGRATE_URL"
