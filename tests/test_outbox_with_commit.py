"""Outbox writes sent with the COMMIT (`OutboxSettings.write_at="commit"`, the default): one round
trip for the outbox statement and the COMMIT, and the same outcome as a write at flush.

PostgreSQL through psycopg 3's sync connections, the only place it applies; everything else
writes at flush, which `test_outbox.py` specifies on all four dialect and session kinds.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import outbox
from outbox import SETTINGS_KEY, OutboxSettings, outbox_table, publish
from outbox.table import versions_table
from tests.conftest import PgSchema
from tests.models import Base, Order, OrderShipped

WITH_COMMIT = {SETTINGS_KEY: OutboxSettings(write_at="commit")}


@pytest.fixture
def app(pg_engine: Engine) -> Engine:
    Base.metadata.create_all(pg_engine)
    outbox.metadata.create_all(pg_engine)
    return pg_engine


def statements(engine: Engine) -> list[str]:
    """Every statement SQLAlchemy sends on `engine` from now on."""
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
    return sent


def outbox_statements(sent: list[str]) -> list[str]:
    return [s for s in sent if "INSERT INTO outbox " in s or "pg_logical_emit_message" in s]


def events(engine: Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_table).order_by(outbox_table.c.id))
        return [(row.type, row.aggregateid, row.aggregateversion) for row in rows]


def order(n: int) -> Order:
    return Order(id=n, customer=f"c{n}", amount_cents=100 * n)


def test_the_outbox_statement_rides_with_the_commit_and_its_rows_commit(app: Engine) -> None:
    sent = statements(app)
    with Session(app, info=WITH_COMMIT) as session:
        session.add(order(1))
        session.commit()
    assert outbox_statements(sent) == []  # not a statement of its own
    assert events(app) == [("OrderCreated", "1", 1)]

    sent.clear()
    with Session(app, info={SETTINGS_KEY: OutboxSettings(write_at="flush")}) as session:
        session.add(order(2))
        session.commit()
    assert len(outbox_statements(sent)) == 1  # the other setting: at flush, its own round trip
    assert events(app) == [("OrderCreated", "1", 1), ("OrderCreated", "2", 1)]


def test_anything_the_transaction_runs_after_the_flush_sees_the_rows(app: Engine) -> None:
    with Session(app, info=WITH_COMMIT) as session:
        session.add(order(1))
        session.flush()
        assert session.scalar(select(func.count()).select_from(outbox_table)) == 1
        publish(session, OrderShipped(order_id=1, carrier="dhl"))
        session.add(order(2))
        session.commit()
    assert events(app) == [("OrderCreated", "1", 1), ("OrderShipped", "1", 2), ("OrderCreated", "2", 1)]


def test_a_rolled_back_savepoint_takes_its_deferred_rows_with_it(app: Engine) -> None:
    with Session(app, info=WITH_COMMIT) as session:
        session.add(order(1))
        with session.begin_nested() as savepoint:
            session.add(order(2))
            session.flush()  # deferred, then sent before ROLLBACK TO SAVEPOINT
            savepoint.rollback()
        session.add(order(3))
        session.commit()
    assert events(app) == [("OrderCreated", "1", 1), ("OrderCreated", "3", 1)]


def test_a_rollback_drops_what_was_deferred_and_the_next_transaction_does_not_carry_it(app: Engine) -> None:
    with app.connect() as conn:
        with Session(conn, info=WITH_COMMIT) as session:
            session.add(order(1))
            session.flush()
            session.rollback()
        conn.rollback()
        with Session(conn, info=WITH_COMMIT) as session:
            session.add(order(2))
            session.commit()
        conn.commit()
    assert events(app) == [("OrderCreated", "2", 1)]


def test_a_failing_outbox_statement_fails_the_commit_and_nothing_of_the_transaction_commits(
    app: Engine,
) -> None:
    with Session(app, info=WITH_COMMIT) as session:
        session.add(order(1))
        session.commit()
    holder = app.connect()
    holder.execute(select(versions_table).where(versions_table.c.aggregateid == "1").with_for_update())
    with app.connect() as conn:
        try:
            with Session(conn, info=WITH_COMMIT) as session:
                session.execute(text("SET lock_timeout = '100ms'"))
                session.get(Order, 1).amount_cents = 150  # type: ignore[union-attr]
                session.flush()  # `holder` locks the counter row: the deferred statement will wait
                with pytest.raises(OperationalError, match="lock timeout"):
                    session.commit()
        finally:
            holder.rollback()
            holder.close()
        conn.rollback()
        with Session(conn, info=WITH_COMMIT) as session:  # the same connection goes on writing
            session.add(order(3))
            session.commit()
        conn.commit()
    assert events(app) == [("OrderCreated", "1", 1), ("OrderCreated", "3", 1)]
    with Session(app) as session:
        assert session.get(Order, 1).amount_cents == 100  # type: ignore[union-attr]


def test_writes_go_on_after_psycopg_deallocates_every_prepared_statement(app: Engine) -> None:
    """psycopg sends DEALLOCATE ALL after a rollback and after DDL; the outbox's prepared statement
    goes with it and is prepared again in the next commit's round trip."""
    with app.connect() as conn:
        for n in range(1, 8):  # psycopg prepares its own after 5 runs, so it has some to deallocate
            with Session(conn, info=WITH_COMMIT) as session:
                session.add(order(n))
                session.commit()
            conn.commit()
        conn.execute(select(1))
        conn.rollback()  # psycopg: DEALLOCATE ALL
        with Session(conn, info=WITH_COMMIT) as session:
            session.add(order(10))
            session.commit()
        conn.commit()
        conn.execute(text("CREATE TABLE scratch (n int)"))  # DDL: psycopg deallocates again
        conn.commit()
        with Session(conn, info=WITH_COMMIT) as session:
            session.add(order(11))
            session.commit()
        conn.commit()
    assert [aggregate for _, aggregate, _ in events(app)] == [*map(str, range(1, 8)), "10", "11"]


def test_under_autocommit_nothing_waits_for_a_commit(pg_schema: PgSchema) -> None:
    engine = create_engine(pg_schema.url, connect_args=pg_schema.connect_args, isolation_level="AUTOCOMMIT")
    try:
        Base.metadata.create_all(engine)
        outbox.metadata.create_all(engine)
        sent = statements(engine)
        with Session(engine, info=WITH_COMMIT) as session:
            session.add(order(1))
            session.flush()  # committed at once, each statement on its own: so is the outbox row
        assert len(outbox_statements(sent)) == 1
        assert events(engine) == [("OrderCreated", "1", 1)]
    finally:
        engine.dispose()


def test_psycopg2_writes_at_flush(pg_schema: PgSchema) -> None:
    pytest.importorskip("psycopg2")
    url = pg_schema.url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
    engine = create_engine(url, connect_args=pg_schema.connect_args)
    try:
        Base.metadata.create_all(engine)
        outbox.metadata.create_all(engine)
        sent = statements(engine)
        with Session(engine, info=WITH_COMMIT) as session:
            session.add(order(1))
            session.commit()
        assert len(outbox_statements(sent)) == 1
        assert events(engine) == [("OrderCreated", "1", 1)]
    finally:
        engine.dispose()


def test_threads_each_commit_their_own_deferred_writes(app: Engine) -> None:
    failures: list[BaseException] = []

    def writer(first: int) -> None:
        try:
            for n in range(first, first + 50):
                with Session(app, info=WITH_COMMIT) as session:
                    session.add(order(n))
                    session.commit()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(1000 * t,)) for t in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    expected: list[Any] = sorted(str(n) for t in range(1, 5) for n in range(1000 * t, 1000 * t + 50))
    assert sorted(aggregate for _, aggregate, _ in events(app)) == expected
