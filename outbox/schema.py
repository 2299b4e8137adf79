"""Creating and upgrading the outbox tables, with or without an Alembic setup of your own.

outboxkit ships its migrations inside the package (`outbox/migrations`) and records them in its
own version table, `outboxkit_alembic_version`. So an application either calls `upgrade(engine)`
at deploy time (or runs `outboxkit migrate --url ...`) and never thinks about Alembic, or adds the
migrations to its own Alembic environment — see the README. `metadata.create_all()` stays fine for
tests and throwaway databases, but leaves nothing to upgrade from later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import alembic.context
import alembic.op
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "outboxkit_alembic_version"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` for the outbox migrations, e.g. for `alembic.command.history`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(bind: Engine | Connection | str, revision: str = "head") -> None:
    """Bring the outbox tables to `revision` (default: the newest) in one transaction."""
    _run(bind, lambda config: command.upgrade(config, revision))


def downgrade(bind: Engine | Connection | str, revision: str) -> None:
    """Take the outbox tables back to `revision`; `"base"` drops them (and their events)."""
    _run(bind, lambda config: command.downgrade(config, revision))


def _run(bind: Engine | Connection | str, action: Callable[[Config], None]) -> None:
    if isinstance(bind, Connection):
        config = alembic_config()
        config.attributes["connection"] = bind
        with _inside_another_alembic_run():
            action(config)
        return
    engine = create_engine(bind) if isinstance(bind, str) else bind
    try:
        with engine.begin() as connection:
            _run(connection, action)
    finally:
        if isinstance(bind, str):
            engine.dispose()


@contextmanager
def _inside_another_alembic_run() -> Iterator[None]:
    """Let `upgrade(connection)` run from an application's own env.py or migration.

    Alembic keeps the running environment and operations in the module globals behind
    `alembic.context` and `alembic.op`, and when a command ends it removes them rather than
    putting back what was there — the caller's env.py would lose its `context`. Put it back.
    """
    running = [getattr(module, "_proxy", None) for module in (alembic.context, alembic.op)]
    try:
        yield
    finally:
        for proxy in running:
            if proxy is not None:
                proxy._install_proxy()


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """For your own Alembic env's `include_object`: keeps autogenerate off outboxkit's version table.

    Add `outbox.metadata` to your `target_metadata` too, or autogenerate proposes dropping the outbox.
    """
    return not (type_ == "table" and name == VERSION_TABLE)
