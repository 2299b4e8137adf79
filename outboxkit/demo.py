"""The demo: a tiny order service, its outbox, the relay, Kafka and the sink into DuckDB.

The orders table opts in to the outbox with `OutboxMixin`. Everything is real: the app database
is an SQLite file, Kafka is the broker `scripts/services`
started, the warehouse is a DuckDB file. Each run uses fresh topic, source and group names, so
runs never see each other's events. The demo checks its own outcome: every committed event must
be in the warehouse exactly once and the rolled-back one must not.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox import SETTINGS_KEY, Outbox, OutboxMixin, OutboxSettings, outbox_table
from outbox import metadata as outbox_metadata
from outbox.kafka_settings import KafkaSettings
from relay import RelaySettings, relay_from_settings
from relay.topics import ensure_topic
from sink import SinkSettings, TableMapping, sink_from_settings


class DemoSettings(BaseSettings):
    """`OUTBOXKIT_KAFKA_BOOTSTRAP` points the demo at another broker (as for scripts/services)."""

    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_", env_file=".env", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:19092"


class Base(DeclarativeBase):
    pass


class Order(OutboxMixin, Base):
    """A business table that emits OrderCreated / OrderUpdated / OrderDeleted through the outbox."""

    __tablename__ = "orders"
    __outbox__ = Outbox(aggregate_type="order", created="OrderCreated", updated="OrderUpdated")

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    amount_cents: Mapped[int]


@dataclass
class DemoReport:
    committed: list[str] = field(default_factory=list)
    landed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return sorted(self.landed) == sorted(self.committed)


CUSTOMERS = ("ada", "grace", "edsger", "barbara", "donald")


def run_demo(workdir: Path, orders: int, out: TextIO, kafka: KafkaSettings | None = None) -> DemoReport:
    """Run the pipeline once, print what happens, and return what was committed and what landed."""
    kafka = kafka or KafkaSettings(bootstrap_servers=DemoSettings().kafka_bootstrap)
    run_id = uuid.uuid4().hex[:8]
    # Fresh topics per run through the session's topic template: runs never see each other.
    settings = OutboxSettings(topic_template=f"outboxkit-demo.{run_id}.{{aggregate_type}}")
    topic = settings.topic_template.format(aggregate_type="order")
    workdir.mkdir(parents=True, exist_ok=True)
    app = create_engine(f"sqlite:///{workdir / 'app.db'}")
    Base.metadata.create_all(app)
    outbox_metadata.create_all(app)
    ensure_topic(kafka, topic, partitions=3)
    sessions = sessionmaker(app, info={SETTINGS_KEY: settings})

    _place_orders(sessions, orders)
    out.write(f"app     committed {orders} new orders and a change to order 1, each with its outbox event\n")
    _place_orders(sessions, 1, roll_back=True)
    out.write("app     rolled back 1 order: its event must never arrive\n")
    with app.connect() as conn:
        committed = list(conn.execute(select(outbox_table.c.event_id)).scalars())

    relay_settings = RelaySettings(
        database_url=f"sqlite:///{workdir / 'app.db'}", source_id=f"demo-{run_id}", kafka=kafka
    )
    for attempt in ("", " (restarted: must publish nothing twice)"):
        relay = relay_from_settings(relay_settings)
        stats = relay.run(lambda: False, drain=True)
        out.write(
            f"relay   published {stats.published} events in {stats.transactions} Kafka transaction(s), "
            f"checkpoint after {stats.position}, deleted {stats.deleted} published rows{attempt}\n"
        )

    warehouse = workdir / "warehouse.duckdb"
    sink_settings = SinkSettings(
        warehouse_url=f"duckdb:///{warehouse}",
        kafka=kafka,
        group_id=f"outboxkit-demo-{run_id}",
        tables=[
            TableMapping(topic=topic, table="orders", mode="upsert"),  # current state per order
            TableMapping(topic=topic, table="order_events", mode="append"),  # the event log
        ],
    )
    deadline = time.monotonic() + 60
    sink_stats = sink_from_settings(sink_settings).run(lambda: time.monotonic() > deadline, drain=True)
    out.write(f"sink    applied {sink_stats.applied} changes to 2 tables in DuckDB at {warehouse}\n\n")

    landed = _print_warehouse(create_engine(f"duckdb:///{warehouse}"), topic, sink_settings.group_id, out)
    return DemoReport(committed=committed, landed=landed)


def _place_orders(sessions: sessionmaker[Session], count: int, *, roll_back: bool = False) -> None:
    with sessions() as session:
        for n in range(count):
            session.add(Order(customer=CUSTOMERS[n % len(CUSTOMERS)], amount_cents=1000 + 250 * n))
        if roll_back:
            session.rollback()
            return
        session.flush()
        first = session.get(Order, 1)
        if first is not None:
            first.amount_cents += 99  # an update: the event carries the changed field and the new state
        session.commit()


def _print_warehouse(warehouse: Engine, topic: str, group_id: str, out: TextIO) -> list[str]:
    with warehouse.connect() as conn:
        events = conn.execute(
            text("select _partition, _offset, _key, _event_type, _event_id from order_events order by 1, 2")
        ).all()
        orders = conn.execute(
            text("select id, customer, amount_cents, _version from orders order by id")
        ).all()
        stored = conn.execute(
            text("select count(*) from outboxkit_offsets where group_id = :group"), {"group": group_id}
        ).scalar_one()
    out.write(f"order_events (append: the event log of {topic})\n")
    out.write(f"  {'partition@offset':<17} {'key':<5} type\n")
    for partition, offset, key, event_type, _ in events:
        out.write(f"  {f'{partition}@{offset}':<17} {key:<5} {event_type}\n")
    out.write("orders (upsert: the current state, one row per order, deduped by version)\n")
    out.write(f"  {'id':<4} {'customer':<9} {'amount_cents':>12} version\n")
    for order in orders:
        out.write(f"  {order.id:<4} {order.customer:<9} {order.amount_cents:>12} {order._version}\n")
    out.write(
        f"\nwarehouse holds {len(events)} events, {len(orders)} orders, offsets of {stored} partition(s)\n"
    )
    return [event_id for *_, event_id in events]
