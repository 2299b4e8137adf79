"""The outbox tables, defined once with SQLAlchemy Core (the Alembic migrations create the same).

Column names follow Debezium's outbox convention (`id`, `aggregatetype`, `aggregateid`, `type`,
`payload`) so a team can switch capture tools without migrating data. What outboxkit adds:

* `id` — the capture position. On SQLite the single writer makes id order commit order; on
  PostgreSQL the relay needs gap-safe capture on top of it (see the relay).
* `event_id` — the event's identity on the wire (UUIDv7), what consumers dedupe by.
* `aggregateversion` — 1, 2, 3... per aggregate, taken from `outbox_versions` under a row lock
  held until commit. Two transactions writing events of one aggregate therefore serialise, and
  version order is their commit order — even when PostgreSQL handed out their xids the other way
  round. Consumers use it to reject stale or reordered events.
* `topic`, `key` — routing resolved at write time, so the relay never guesses.
* `payload` — the serialised JSON exactly as it will be produced: size limits and serialisation
  errors surface inside the application's transaction, not later in the relay.
* `headers` — JSON object of user headers, W3C `traceparent`/`tracestate` among them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, func

metadata = MetaData()

outbox_table = Table(
    "outbox",
    metadata,
    # BIGINT on servers; SQLite only auto-increments an INTEGER PRIMARY KEY.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("aggregatetype", String(255), nullable=False),
    Column("aggregateid", String(255), nullable=False),
    Column("aggregateversion", BigInteger, nullable=False),
    Column("type", String(255), nullable=False),
    Column("topic", String(249), nullable=False),  # 249 is Kafka's topic name limit
    Column("key", String(255), nullable=True),
    Column("payload", Text, nullable=False),
    Column("headers", Text, nullable=False, server_default="{}"),
    Column("schema_version", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

versions_table = Table(
    "outbox_versions",
    metadata,
    Column("aggregatetype", String(255), primary_key=True),
    Column("aggregateid", String(255), primary_key=True),
    Column("version", BigInteger, nullable=False),
)
