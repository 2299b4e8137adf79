"""B2's backlog: an outbox full of committed rows, as a relay finds it after being away a while.

Writing 200,000 rows through the mixin would take minutes per measurement, so the rows are
generated in SQL, a few big transactions of `CHUNK` rows — but shaped as the mixin writes them:
a UUID event id, keys spread over `AGGREGATES` aggregates with versions 1, 2, 3 ... in id order,
the key's `shard_key` (`wire.shard_key`, computed here, not guessed in SQL), a JSON
payload of about 200 bytes, and the writing transaction's `xid`, without which PostgreSQL
capture would never see a row. `outbox_versions` stays empty: only writers read it.

After loading, `VACUUM (ANALYZE)`: a backlog that built up over minutes has met autovacuum
(PostgreSQL 13+ vacuums insert-only tables too), so the planner knows the table's size and the
visibility map is set, as it would be for a real relay catching up.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, select, text

from outbox import outbox_table
from wire import shard_key

AGGREGATES = 1000
CHUNK = 50_000  # rows per loading transaction
PAD = 80  # characters of note: brings the payload to about 200 bytes

_KEYS = [f"order-{n}" for n in range(AGGREGATES)]
_LOAD = text(
    """
    INSERT INTO outbox (event_id, aggregatetype, aggregateid, aggregateversion, type, topic, key, payload,
                        shard_key, xid)
    SELECT gen_random_uuid()::text, 'order', 'order-' || (g % :aggregates), g / :aggregates + 1,
           'OrderPlaced', :topic, 'order-' || (g % :aggregates),
           jsonb_build_object('state', jsonb_build_object(
               'id', g, 'customer', 'customer-' || (g % :aggregates), 'amount_cents', (g * 7919) % 100000,
               'currency', 'EUR', 'status', 'placed', 'note', repeat('x', :pad)))::text,
           (CAST(:shard_keys AS int[]))[g % :aggregates + 1],
           CAST(CAST(pg_current_xact_id() AS text) AS bigint)
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g
    ORDER BY g
    """
)


def reload(engine: Engine, topic: str, rows: int) -> None:
    """Empty the outbox, then fill it with `rows` committed events for `topic`."""
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE outbox"))
    params = {"aggregates": AGGREGATES, "topic": topic, "pad": PAD, "shard_keys": _shard_keys()}
    for first in range(0, rows, CHUNK):
        with engine.begin() as conn:
            conn.execute(_LOAD, {**params, "first": first, "last": min(first + CHUNK, rows) - 1})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) outbox"))


def event_ids(engine: Engine, limit: int | None = None) -> list[str]:
    """The event ids of the oldest `limit` rows (all without one): what must reach Kafka."""
    query = select(outbox_table.c.event_id).order_by(outbox_table.c.id).limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def average_payload_bytes(engine: Engine) -> float:
    with engine.connect() as conn:
        return float(conn.execute(text("SELECT avg(octet_length(payload)) FROM outbox")).scalar_one() or 0)


def _shard_keys() -> Sequence[int]:
    return [shard_key(key) for key in _KEYS]
