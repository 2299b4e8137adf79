"""The Alembic migrations create exactly the tables `outbox.table` defines, and undo cleanly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, String, create_engine, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import outbox
from outbox import schema
from tests.conftest import PgSchema
from tests.models import Order


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        pg: PgSchema = request.getfixturevalue("pg_schema")
        engine = create_engine(pg.url, connect_args=pg.connect_args)
    yield engine
    engine.dispose()


def differences(engine: Engine, *targets: MetaData) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": schema.include_object, "compare_server_default": True}
        )
        return list(compare_metadata(context, list(targets)))


def test_upgrade_head_creates_what_the_core_definition_says_and_downgrade_base_removes_it(
    empty_db: Engine,
) -> None:
    schema.upgrade(empty_db)
    assert differences(empty_db, outbox.metadata) == []  # autogenerate finds nothing to do

    schema.downgrade(empty_db, "base")
    assert set(inspect(empty_db).get_table_names()) == {schema.VERSION_TABLE}

    schema.upgrade(empty_db)  # and up again, as after a rollback of a deploy
    assert {"outbox", "outbox_versions"} <= set(inspect(empty_db).get_table_names())


def test_the_migrated_outbox_takes_events(empty_db: Engine) -> None:
    schema.upgrade(empty_db)
    Order.metadata.create_all(empty_db)
    with Session(empty_db) as session:
        session.add(Order(id=1, customer="ada", amount_cents=100))
        session.commit()
    with empty_db.connect() as conn:
        assert conn.execute(outbox.outbox_table.select()).one().type == "OrderCreated"


class AppBase(DeclarativeBase):
    pass


class Invoice(AppBase):
    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(20))


def test_an_app_with_its_own_alembic_history_sees_no_drift_when_it_follows_the_readme(
    empty_db: Engine,
) -> None:
    AppBase.metadata.create_all(empty_db)  # stands in for the app's own migrations
    schema.upgrade(empty_db)
    assert differences(empty_db, AppBase.metadata, outbox.metadata) == []
    assert differences(empty_db, AppBase.metadata) != []  # without outbox.metadata it would drop the outbox


def test_outboxkit_migrate_upgrades_a_database_and_explains_one_it_cannot_reach(tmp_path: Path) -> None:
    def migrate(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outboxkit.cli", "migrate", "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = migrate(f"sqlite:///{tmp_path / 'app.db'}")
    assert done.returncode == 0, done.stderr
    assert "the outbox tables are at head" in done.stdout
    assert "outbox" in inspect(create_engine(f"sqlite:///{tmp_path / 'app.db'}")).get_table_names()

    failed = migrate("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert failed.returncode == 1
    assert "outboxkit migrate: OperationalError" in failed.stderr
    assert "Connection refused" in failed.stderr
