"""The Alembic migrations create exactly the tables `outbox.table` defines, and undo cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, String, Table, create_engine, insert, inspect, make_url, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import outbox
from outbox import schema
from outbox.table import dead_letters_table
from tests.conftest import PgSchema
from tests.models import Order


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        pg: PgSchema = request.getfixturevalue("pg_schema")
        # The search path in the URL itself, so an Alembic env given only the URL lands in the schema.
        engine = create_engine(make_url(pg.url).update_query_dict(pg.connect_args))
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


USER_ENV = """
from alembic import context
from sqlalchemy import create_engine

import outbox
from outbox import schema
from tests.test_migrations import AppBase

target_metadata = [AppBase.metadata, outbox.metadata]
engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=target_metadata, include_object=schema.include_object
    )
    with context.begin_transaction():
        context.run_migrations()
    schema.upgrade(connection)
engine.dispose()
"""

USER_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "invoices", sa.Column("id", sa.Integer, primary_key=True), sa.Column("number", sa.String(20))
    )
"""


class AppBase(DeclarativeBase):
    """The application's own models, migrated by its own Alembic history."""


class Invoice(AppBase):
    __tablename__ = "invoices"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str | None] = mapped_column(String(20))


def test_an_app_with_its_own_alembic_env_gets_the_outbox_the_way_the_readme_says(
    empty_db: Engine, tmp_path: Path
) -> None:
    (tmp_path / "env" / "versions").mkdir(parents=True)
    (tmp_path / "env" / "env.py").write_text(USER_ENV)
    (tmp_path / "env" / "versions" / "a1_invoices.py").write_text(USER_REVISION)
    config = Config()
    config.set_main_option("script_location", str(tmp_path / "env"))
    config.set_main_option(
        "sqlalchemy.url", empty_db.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    command.upgrade(config, "head")

    tables = set(inspect(empty_db).get_table_names())
    assert {"invoices", "outbox", "outbox_versions", "alembic_version", schema.VERSION_TABLE} <= tables
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
    assert "outboxkit migrate: cannot use the database at --url" in failed.stderr
    assert "Connection refused" in failed.stderr


def test_outboxkit_migrate_takes_its_url_from_the_environment_and_keeps_it_out_of_the_process_list(
    pg_schema: PgSchema,
) -> None:
    """What the migration Job does (k8s/migrate): the URL, password included, comes from a Secret
    as OUTBOXKIT_MIGRATE_URL; neither the command line nor the output shows the password."""
    password = "pw-" + uuid.uuid4().hex  # the suite's PostgreSQL trusts loopback: any password works
    url = make_url(pg_schema.url).set(password=password).update_query_dict(pg_schema.connect_args)
    env = {**os.environ, "OUTBOXKIT_MIGRATE_URL": url.render_as_string(hide_password=False)}
    job = subprocess.Popen(
        [sys.executable, "-m", "outboxkit.cli", "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # What `ps` shows, read while it runs (Python's start alone outlasts this). Empty for a moment
    # while the exec is being set up: read until it is there.
    command_line = ""
    while not command_line and job.poll() is None:
        command_line = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode()
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert "outboxkit.cli\0migrate" in command_line
    assert password not in command_line + out + err
    assert "the outbox tables are at head" in out
    engine = create_engine(url)
    try:
        assert "outbox" in inspect(engine).get_table_names(schema=pg_schema.name)
    finally:
        engine.dispose()


def test_0005_renames_the_relays_dead_letters_keeping_their_rows_and_downgrade_renames_them_back(
    empty_db: Engine,
) -> None:
    at = datetime(2026, 11, 26, 5, 2, tzinfo=UTC)
    row = {
        "id": 77,
        "event_id": "01a2",
        "aggregatetype": "Order",
        "aggregateid": "1",
        "aggregateversion": 3,
        "type": "OrderCreated",
        "topic": "orders",
        "key": "1",
        "payload": "{}",
        "headers": "{}",
        "schema_version": 1,
        "created_at": at,
        "reason": "Message size too large",
    }
    schema.upgrade(empty_db, "0004")
    old = Table("outbox_quarantine", MetaData(), autoload_with=empty_db)  # as 0003 made it
    with empty_db.begin() as conn:
        conn.execute(insert(old), [row | {"quarantined_at": at}])

    schema.upgrade(empty_db)
    assert "outbox_quarantine" not in inspect(empty_db).get_table_names()
    assert differences(empty_db, outbox.metadata) == []  # the same as a new database
    primary_key = inspect(empty_db).get_pk_constraint("outbox_dead_letters")["name"]
    assert primary_key in {None, "outbox_dead_letters_pkey"}  # SQLite's is unnamed; autogenerate misses it
    with empty_db.connect() as conn:
        moved = conn.execute(select(dead_letters_table)).one()._asdict()
    assert _utc(moved.pop("dead_lettered_at")) == at
    assert moved | {"created_at": _utc(moved["created_at"])} == row

    schema.downgrade(empty_db, "0004")
    with empty_db.connect() as conn:
        back = conn.execute(select(old)).one()._asdict()
    assert (back["id"], back["reason"], _utc(back["quarantined_at"])) == (77, row["reason"], at)


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (in UTC, as written); PostgreSQL with a time zone."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
