"""The outbox table, defined once with SQLAlchemy Core.

Column names follow Debezium's outbox convention (`id`, `aggregatetype`, `aggregateid`, `type`,
`payload`) so a team can switch capture tools without migrating data. What outboxkit adds:

* `id` is the capture position. On SQLite the single writer makes id order commit order; other
  dialects need the relay's gap-safe capture (a later part of the relay) before they may be polled.
* `event_id` — the event's identity on the wire (UUIDv7), what consumers dedupe by.
* `topic`, `key` — routing resolved at capture time, so the relay never guesses.
* `payload` — the serialised bytes (as text) exactly as they will be produced: size limits and
  serialisation errors surface inside the application's transaction, not later in the relay.
* `headers` — JSON object of user headers (e.g. `traceparent`).
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
    Column("type", String(255), nullable=False),
    Column("topic", String(249), nullable=False),  # 249 is Kafka's topic name limit
    Column("key", String(255), nullable=True),
    Column("payload", Text, nullable=False),
    Column("headers", Text, nullable=False, server_default="{}"),
    Column("schema_version", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
