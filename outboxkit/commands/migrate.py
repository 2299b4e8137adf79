"""`outboxkit migrate`: create or upgrade the outbox tables in the application database."""

from __future__ import annotations

import argparse

from sqlalchemy import make_url

from outboxkit.commands import Commands
from outboxkit.failures import Named
from runtime.process import ExitCode
from runtime.urls import parsed_url


def register(commands: Commands) -> None:
    migrate = commands.add_parser(
        "migrate", help="create or upgrade the outbox tables (Alembic, own version table)"
    )
    migrate.add_argument(
        "--url", required=True, type=_database_url, help="SQLAlchemy URL of the application database"
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

    named.database("--url", args.url)
    (schema.downgrade if args.downgrade else schema.upgrade)(args.url, args.revision)
    print(f"outboxkit migrate: the outbox tables are at {args.revision} in {make_url(args.url)!r}")
    return ExitCode.OK
