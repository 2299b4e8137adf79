"""The outbox tables, defined once with SQLAlchemy Core (the Alembic migrations create the same).

Column names follow Debezium's outbox convention (`id`, `aggregatetype`, `aggregateid`, `type`,
`payload`) so a team can switch capture tools without migrating data. What outboxkit adds:

* `id` — unique and increasing in insert order, never handed out twice. On SQLite, where one
  writer at a time holds the database, id order is commit order and the relay captures by id
  alone; AUTOINCREMENT keeps SQLite from giving the ids of deleted rows out again (without it, an
  outbox emptied by cleanup starts at 1 again, below the relay's checkpoint, and those events are lost).
* `xid` — PostgreSQL only (NULL on SQLite): the writing transaction's id (`pg_current_xact_id()`).
  Ids are handed out at insert, not at commit, so a cursor over ids would skip rows committed late.
  The relay instead drains, snapshot after snapshot, the rows whose transaction is visible in the
  newer snapshot and was not in the older one (`pg_visible_in_snapshot`), each such delta in id
  order; see `relay.capture`.
* `event_id` — the event's identity on the wire (UUIDv7), what consumers dedupe by.
* `aggregateversion` — 1, 2, 3... per aggregate, taken from `outbox_versions` under a row lock
  held until commit. Two transactions writing events of one aggregate therefore serialise, and
  version order is their commit order — even when PostgreSQL handed out their xids the other way
  round. Consumers use it to reject stale or reordered events.
* `topic`, `key` — routing resolved at write time, so the relay never guesses.
* `shard_key` — a non-negative hash of `key`; relays sharing one outbox split it into
  `shard_key % shards`, so all events of a key go through one relay (NULL counts as 0).
* `payload` — the serialised JSON exactly as it will be produced: size limits and serialisation
  errors surface inside the application's transaction, not later in the relay.
* `headers` — JSON object of user headers, W3C `traceparent`/`tracestate` among them.

`outbox_job_inbox` is the worker's side of background jobs (`jobs.inbox`): one row per Dramatiq
message whose effect committed, written in the actor's own transaction, so a redelivered message
finds its row and is not run again. It lives here so one migration history creates every table.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text, func

metadata = MetaData()

# The prefix of the logical decoding messages events are written as when they get no row
# (`OutboxSettings.write_as="message"`), followed by the outbox table's oid: every replication
# slot of a database receives every message written in it, whatever the schema, so the prefix
# names the one outbox a relay reads. `v1` is the content's format (`outbox.store`).
MESSAGE_PREFIX = "outboxkit.outbox.v1:"

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
    Column("shard_key", Integer, nullable=True),
    Column("xid", BigInteger, nullable=True),
    Index("outbox_xid", "xid"),
    sqlite_autoincrement=True,
)

versions_table = Table(
    "outbox_versions",
    metadata,
    Column("aggregatetype", String(255), primary_key=True),
    Column("aggregateid", String(255), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

dead_letters_table = Table(
    "outbox_dead_letters",
    metadata,
    # The outbox row as it was (same id), moved here by the relay when Kafka refuses it for good.
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False),
    Column("aggregatetype", String(255), nullable=False),
    Column("aggregateid", String(255), nullable=False),
    Column("aggregateversion", BigInteger, nullable=False),
    Column("type", String(255), nullable=False),
    Column("topic", String(249), nullable=False),
    Column("key", String(255), nullable=True),
    Column("payload", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

job_inbox_table = Table(
    "outbox_job_inbox",
    metadata,
    # Dramatiq's ids are 36-character UUIDs; 64 leaves room for messages not sent through the outbox.
    Column("message_id", String(64), primary_key=True),
    Column("actor_name", String(255), nullable=False),
    Column("queue_name", String(255), nullable=False),
    Column("done_at", DateTime(timezone=True), nullable=False),
    Column("duplicates", Integer, nullable=False, server_default="0"),  # redeliveries absorbed
    Index("outbox_job_inbox_done_at", "done_at"),  # pruning deletes by age
)
