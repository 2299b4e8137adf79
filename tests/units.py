"""One application transaction, driven through a `Session` or an `AsyncSession`.

The outbox specifications are written once against `Unit`; the fixture runs each of them with
both kinds of session, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
from sqlalchemy import Engine, Executable, MetaData, create_engine, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import outbox
from outbox import Event, outbox_table, publish, publish_async


class Unit(Protocol):
    def add(self, *objects: object) -> None: ...
    def delete(self, obj: object) -> None: ...
    def get(self, model: type[Any], key: int) -> Any: ...
    def flush(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def publish(self, event: Event, headers: dict[str, str] | None = None) -> str: ...
    def savepoint(self) -> Any: ...
    def rollback_savepoint(self, savepoint: Any) -> None: ...
    def execute(self, statement: Executable) -> Any: ...
    def close(self) -> None: ...


class SyncUnit:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *objects: object) -> None:
        self.session.add_all(objects)

    def delete(self, obj: object) -> None:
        self.session.delete(obj)

    def get(self, model: type[Any], key: int) -> Any:
        return self.session.get(model, key)

    def flush(self) -> None:
        self.session.flush()

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()

    def publish(self, event: Event, headers: dict[str, str] | None = None) -> str:
        return publish(self.session, event, headers=headers)

    def savepoint(self) -> Any:
        return self.session.begin_nested()

    def rollback_savepoint(self, savepoint: Any) -> None:
        savepoint.rollback()

    def execute(self, statement: Executable) -> Any:
        return self.session.execute(statement)

    def close(self) -> None:
        self.session.close()


class AsyncUnit:
    """Every call awaits the AsyncSession's coroutine on the unit's own event loop."""

    def __init__(self, session: AsyncSession, loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.loop = loop

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def add(self, *objects: object) -> None:
        self.session.add_all(objects)

    def delete(self, obj: object) -> None:
        self._run(self.session.delete(obj))

    def get(self, model: type[Any], key: int) -> Any:
        return self._run(self.session.get(model, key))

    def flush(self) -> None:
        self._run(self.session.flush())

    def commit(self) -> None:
        self._run(self.session.commit())

    def rollback(self) -> None:
        self._run(self.session.rollback())

    def publish(self, event: Event, headers: dict[str, str] | None = None) -> str:
        return str(self._run(publish_async(self.session, event, headers=headers)))

    def savepoint(self) -> Any:
        return self._run(self.session.begin_nested().start())

    def rollback_savepoint(self, savepoint: Any) -> None:
        self._run(savepoint.rollback())

    def execute(self, statement: Executable) -> Any:
        return self._run(self.session.execute(statement))

    def close(self) -> None:
        self._run(self.session.close())


def outbox_rows(engine: Engine) -> list[Row[Any]]:
    """The outbox as the relay would read it: committed rows in id order."""
    with engine.connect() as conn:
        return list(conn.execute(select(outbox_table).order_by(outbox_table.c.id)))


UnitMaker = Callable[[dict[str, Any]], Callable[[], Unit]]


@contextmanager
def app_database(
    request: pytest.FixtureRequest, tmp_path: Path, tables: MetaData
) -> Iterator[tuple[Engine, UnitMaker]]:
    """The database of a fixture parametrized "<sqlite|postgresql>-<sync|async>", with `tables` and
    the outbox's created, and what makes its units (Session or AsyncSession) for a session `info`."""
    dialect, mode = request.param.split("-")
    if dialect == "sqlite":
        sync_url, async_url = f"sqlite:///{tmp_path / 'app.db'}", f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
        connect_args: dict[str, str] = {}
    else:  # psycopg's async driver: asyncpg is not installed
        schema = request.getfixturevalue("pg_schema")
        sync_url, async_url, connect_args = schema.url, schema.url, schema.connect_args
    engine = create_engine(sync_url, connect_args=connect_args)
    tables.create_all(engine)
    outbox.metadata.create_all(engine)
    loop = asyncio.new_event_loop()
    async_engine = create_async_engine(async_url, connect_args=connect_args) if mode == "async" else None
    try:
        yield engine, lambda info: unit_maker(engine, async_engine, loop, info)
    finally:
        if async_engine is not None:
            loop.run_until_complete(async_engine.dispose())
        loop.close()
        engine.dispose()


def unit_maker(
    engine: Engine, async_engine: AsyncEngine | None, loop: asyncio.AbstractEventLoop, info: dict[str, Any]
) -> Callable[[], Unit]:
    if async_engine is None:
        return lambda: SyncUnit(Session(engine, info=info))  # SQLAlchemy's defaults: expire on commit
    # Async code cannot lazy-load after commit, so it turns expiry off, as SQLAlchemy advises.
    return lambda: AsyncUnit(AsyncSession(async_engine, info=info, expire_on_commit=False), loop)
