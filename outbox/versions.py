"""Per-aggregate versions: the one place with dialect-specific SQL on the app side.

`INSERT ... ON CONFLICT DO UPDATE ... RETURNING` bumps and reads the counter in one round trip and
leaves the counter row locked until the application's transaction ends, which is what turns
version order into commit order for the events of one aggregate.
"""

from __future__ import annotations

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from outbox.errors import OutboxError
from outbox.table import versions_table


def next_versions(conn: Connection, aggregate_type: str, aggregate_id: str, count: int) -> range:
    """Reserve `count` consecutive versions of one aggregate; return them in order."""
    values = {"aggregatetype": aggregate_type, "aggregateid": aggregate_id, "version": count}
    keys = [versions_table.c.aggregatetype, versions_table.c.aggregateid]
    bump = {"version": versions_table.c.version + count}
    if conn.dialect.name == "postgresql":
        pg = (
            postgresql.insert(versions_table)
            .values(values)
            .on_conflict_do_update(index_elements=keys, set_=bump)
        )
        statement = pg.returning(versions_table.c.version)
    elif conn.dialect.name == "sqlite":
        lite = (
            sqlite.insert(versions_table).values(values).on_conflict_do_update(index_elements=keys, set_=bump)
        )
        statement = lite.returning(versions_table.c.version)
    else:
        raise OutboxError(f"outboxkit writes outbox rows on PostgreSQL and SQLite, not {conn.dialect.name}")
    last = int(conn.execute(statement).scalar_one())
    return range(last - count + 1, last + 1)
