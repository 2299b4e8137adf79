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
from runtime import urls
from runtime.process import ExitCode


class MigrateSettings(BaseSettings):
    """`OUTBOXKIT_MIGRATE_URL`, read only when `--url` is not given."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_MIGRATE_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,  # the URL may hold a password
    )

    url: Annotated[SecretStr, AfterValidator(urls.usable_url())] = Field(
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
    migrate.add_argument(
        "--wal-source",
        metavar="SOURCE_ID",
        help="also create the publication and replication slot of each shard of this WAL capture source "
        "(its OUTBOXKIT_RELAY_SOURCE_ID), if missing: rows written from then on are captured, and the "
        "relays' role needs no ownership of the outbox table. Needs REPLICATION and the relay extra",
    )
    migrate.add_argument(
        "--wal-shards",
        type=_shard_count,
        default=1,
        metavar="N",
        help="the source's shard count (OUTBOXKIT_RELAY_SHARDS; default 1), with --wal-source",
    )
    migrate.set_defaults(handler=_migrate)


def _shard_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a shard count is 1 or more, not {text!r}")
    return int(text)


def _database_url(text: str) -> str:
    """`--url`, refused by argparse (exit 2, naming the flag) when it cannot work."""
    try:
        urls.parsed_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _migrate(args: argparse.Namespace, named: Named) -> int:
    from outbox import schema

    url, setting = _url(args, named)
    named.database(setting, url)
    (schema.downgrade if args.downgrade else schema.upgrade)(url, args.revision)
    print(f"outboxkit migrate: the outbox tables are at {args.revision} in {make_url(url)!r}")
    if args.wal_source is not None:
        named.extras = "relay"
        _prepare_wal_source(url, args.wal_source, args.wal_shards)
    return ExitCode.OK


def _prepare_wal_source(url: str, source_id: str, shards: int) -> None:
    """The publications and slots of a WAL source's shards (`relay.capture.slots.prepare_source`)."""
    from relay.capture.slots import prepare_source
    from relay.errors import ConfigError

    engine = urls.engine(url)
    try:
        if engine.dialect.name != "postgresql":
            raise ConfigError("--wal-source is for PostgreSQL: WAL capture reads its write-ahead log")
        made = prepare_source(engine, source_id, shards)
    finally:
        engine.dispose()
    print(
        f"outboxkit migrate: replication slot(s) {', '.join(made)} created for WAL source {source_id}; "
        "they keep WAL until its relays confirm it"
        if made
        else f"outboxkit migrate: the replication slots of WAL source {source_id} were there already"
    )


def _url(args: argparse.Namespace, named: Named) -> tuple[str, str]:
    """The database URL and the setting it came from, as failures name it."""
    if args.url is not None:
        return args.url, "--url"
    settings = named.load(MigrateSettings)
    return settings.url.get_secret_value(), "OUTBOXKIT_MIGRATE_URL"
