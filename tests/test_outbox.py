"""The app-side library: every committed change becomes exactly one outbox row, nothing else does.

Each specification runs four times: SQLite and PostgreSQL, each with a `Session` and with an
`AsyncSession`. Outcomes are read from the outbox table as the relay would read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Engine, delete, func, insert, select, update

from outbox import (
    SETTINGS_KEY,
    BulkOperationError,
    ConfigurationError,
    Event,
    HeaderError,
    OutboxSettings,
    PayloadError,
    PayloadTooLargeError,
    TopicError,
    ValueTooLongError,
)
from outbox.table import versions_table
from tests.models import (
    AuditLog,
    Base,
    Customer,
    Order,
    OrderShipped,
    PriceChanged,
    Product,
    Shipment,
    Stock,
    Thing,
    ThingFlagged,
)
from tests.units import Unit, app_database, outbox_rows


@dataclass
class App:
    engine: Engine
    make: Callable[[dict[str, Any]], Callable[[], Unit]]

    def unit(self, settings: OutboxSettings | None = None) -> Unit:
        return self.make({SETTINGS_KEY: settings} if settings else {})()

    def rows(self) -> list[Any]:
        return outbox_rows(self.engine)

    def events(self) -> list[tuple[str, str]]:
        return [(row.type, row.aggregateid) for row in self.rows()]

    def count(self, model: type[Any]) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


@pytest.fixture(params=["sqlite-sync", "sqlite-async", "postgresql-sync", "postgresql-async"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    with app_database(request, tmp_path, Base.metadata) as (engine, units):
        yield App(engine, units)


def payload(row: Any) -> dict[str, Any]:
    return json.loads(row.payload)


# --- exactly one row per change, and only for committed changes -------------------------------


def test_a_commit_writes_one_row_per_change_in_flush_order(app: App) -> None:
    unit = app.unit()
    first, second = (
        Order(id=1, customer="ada", amount_cents=100),
        Order(id=2, customer="bob", amount_cents=200),
    )
    unit.add(first, second)
    unit.flush()
    first.amount_cents = 150
    unit.delete(second)
    unit.add(Order(id=3, customer="cy", amount_cents=300))
    unit.commit()

    assert app.events() == [
        ("OrderCreated", "1"),
        ("OrderCreated", "2"),
        ("OrderCreated", "3"),  # within a flush: inserts, then updates, then deletes
        ("OrderUpdated", "1"),
        ("OrderDeleted", "2"),
    ]
    assert [row.aggregateversion for row in app.rows()] == [1, 1, 1, 2, 2]
    assert {row.topic for row in app.rows()} == {"shop.orders"}


def test_a_rollback_writes_nothing(app: App) -> None:
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    unit.flush()
    unit.publish(OrderShipped(order_id=1, carrier="dhl"))
    unit.rollback()

    assert app.rows() == []
    assert app.count(Order) == 0


def test_a_rolled_back_savepoint_removes_its_rows_and_the_outer_transaction_keeps_its_own(app: App) -> None:
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    savepoint = unit.savepoint()
    unit.add(Order(id=2, customer="bob", amount_cents=200))
    unit.publish(OrderShipped(order_id=2, carrier="ups"))
    unit.rollback_savepoint(savepoint)
    unit.add(Order(id=3, customer="cy", amount_cents=300))
    unit.commit()

    assert app.events() == [("OrderCreated", "1"), ("OrderCreated", "3")]


# --- what each operation emits ---------------------------------------------------------------


def test_insert_update_and_delete_carry_the_new_state_the_changed_fields_and_the_last_state(app: App) -> None:
    unit = app.unit()
    order = Order(id=7, customer="ada", amount_cents=100, note="first")
    unit.add(order)
    unit.commit()
    order.amount_cents = 120
    unit.commit()
    unit.delete(order)
    unit.commit()

    created, updated, deleted = (payload(row) for row in app.rows())
    state = {"id": 7, "customer": "ada", "amount_cents": 100, "note": "first"}
    assert created == {"state": state}
    assert updated == {
        "state": state | {"amount_cents": 120},
        "changed": {"amount_cents": {"old": 100, "new": 120}},
    }
    assert deleted == {"state": state | {"amount_cents": 120}}


def test_an_update_that_changes_nothing_emits_nothing(app: App) -> None:
    unit = app.unit()
    order = Order(id=1, customer="ada", amount_cents=100)
    unit.add(order)
    unit.commit()
    order.amount_cents = 100
    order.customer = "ada"
    unit.commit()

    assert app.events() == [("OrderCreated", "1")]


def test_events_of_one_aggregate_in_one_flush_get_consecutive_versions_in_flush_order(app: App) -> None:
    unit = app.unit()
    unit.add(Order(id=4, customer="ada", amount_cents=100))
    unit.commit()
    unit.add(Shipment(id=1, order_id=4, carrier="dhl"), Shipment(id=2, order_id=4, carrier="ups"))
    unit.publish(OrderShipped(order_id=4, carrier="dhl"))  # flushes the two shipments, then follows them
    unit.commit()

    rows = app.rows()
    assert [(r.type, r.aggregateid, r.aggregateversion) for r in rows] == [
        ("OrderCreated", "4", 1),  # aggregate type "order"
        ("ShipmentCreated", "4", 1),  # aggregate type "shipments", keyed by the order
        ("ShipmentCreated", "4", 2),
        ("OrderShipped", "4", 2),
    ]
    assert [payload(r)["state"]["carrier"] for r in rows[1:3]] == ["dhl", "ups"]


def test_ten_thousand_events_of_one_aggregate_in_one_flush_are_written_with_their_versions(app: App) -> None:
    """More than one statement's 65,535 parameters would hold, bound one by one."""
    unit = app.unit()
    unit.add(*(Thing(id=n, group="g", n=n) for n in range(10_000)))
    unit.commit()
    assert [row.aggregateversion for row in app.rows()] == list(range(1, 10_001))


def test_models_choose_their_payload_key_and_which_operations_emit(app: App) -> None:
    unit = app.unit()
    customer, shipment = (
        Customer(id=1, name="ada", email="ada@example.com"),
        Shipment(id=9, order_id=4, carrier="dhl"),
    )
    unit.add(customer, shipment)
    unit.commit()
    shipment.carrier = "ups"  # updates of shipments emit nothing
    unit.delete(customer)  # deletes of customers emit nothing
    unit.commit()

    rows = app.rows()
    assert [(r.type, r.topic, r.key) for r in rows] == [
        ("CustomerCreated", "outbox.event.customer", "1"),  # Debezium-style default routing
        ("ShipmentCreated", "shop.shipments", "4"),  # keyed by its order
    ]
    assert payload(rows[0]) == {"state": {"id": 1, "name": "ada"}}  # the email stays out
    assert payload(rows[1]) == {"state": {"order_id": 4, "carrier": "dhl"}}


def test_published_events_and_row_changes_interleave_in_call_order(app: App) -> None:
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    unit.publish(OrderShipped(order_id=1, carrier="dhl"))
    unit.add(Order(id=2, customer="bob", amount_cents=200))
    unit.publish(PriceChanged(sku="A-1", price=9.5), headers={"tenant": "eu"})
    unit.commit()

    rows = app.rows()
    assert [(r.type, r.aggregateid) for r in rows] == [
        ("OrderCreated", "1"),
        ("OrderShipped", "1"),
        ("OrderCreated", "2"),
        ("PriceChanged.v2", "A-1"),
    ]
    assert [r.aggregateversion for r in rows] == [1, 2, 1, 1]  # order 1: created, then shipped
    assert payload(rows[1]) == {"order_id": 1, "carrier": "dhl"}
    assert json.loads(rows[3].headers) == {"tenant": "eu"}


def test_a_domain_event_without_a_topic_lands_on_its_aggregates_topic_after_its_row_changes(app: App) -> None:
    unit = app.unit(OutboxSettings(topic_template="tenant-7.{aggregate_type}"))
    unit.add(Thing(id=1, group="g", n=1))
    unit.publish(ThingFlagged(group="g", reason="audit"))
    unit.commit()

    rows = app.rows()
    assert [(r.type, r.topic, r.aggregateversion) for r in rows] == [
        ("ThingCreated", "tenant-7.thing", 1),
        ("ThingFlagged", "tenant-7.thing", 2),  # same topic and key: in order with the row changes
    ]


# --- aggregate ids: one per primary key, unambiguous ----------------------------------------


def test_composite_keys_whose_parts_hold_the_separator_or_the_escape_are_distinct_aggregates(
    app: App,
) -> None:
    unit = app.unit()
    unit.add(*(Stock(warehouse=w, sku=s, quantity=1) for w, s in [("x:y", "z"), ("x", "y:z")]))
    unit.add(*(Stock(warehouse=w, sku=s, quantity=1) for w, s in [("a\\", "b:c"), ("a:b\\", "c")]))
    unit.commit()

    keys = [r"x\:y:z", r"x:y\:z", r"a\\:b\:c", r"a\:b\\:c"]  # each pair was one key: "x:y:z", "a\:b\:c"
    assert [(r.aggregateid, r.key, r.aggregateversion) for r in app.rows()] == [(k, k, 1) for k in keys]
    with app.engine.connect() as conn:
        counters = conn.execute(select(versions_table.c.aggregateid, versions_table.c.version))
        assert sorted(counters) == sorted((k, 1) for k in keys)


def test_single_column_keys_are_the_value_as_it_is_and_plain_composite_parts_are_joined_by_a_colon(
    app: App,
) -> None:
    unit = app.unit()
    unit.add(Product(sku=r"A:1\b", name="lamp"), Stock(warehouse="berlin", sku="A-1", quantity=3))
    unit.publish(PriceChanged(sku=r"A:1\b", price=9.5))
    unit.commit()

    assert [(r.type, r.aggregateid, r.key, r.aggregateversion) for r in app.rows()] == [
        ("ProductCreated", r"A:1\b", r"A:1\b", 1),
        ("StockCreated", "berlin:A-1", "berlin:A-1", 1),
        ("PriceChanged.v2", r"A:1\b", r"A:1\b", 2),  # a domain event of the same product aggregate
    ]


def test_a_key_of_255_characters_fits_counted_in_characters_not_bytes(app: App) -> None:
    unit = app.unit()
    unit.add(Product(sku="é" * 255, name="lamp"))  # 510 bytes in UTF-8
    unit.commit()

    assert [r.aggregateid for r in app.rows()] == ["é" * 255]


# --- bad input fails inside the transaction, and takes the business rows with it -------------


def assert_nothing_committed(app: App) -> None:
    assert app.rows() == []
    assert app.count(Order) == 0


def test_events_written_as_messages_leave_no_row_and_count_versions_and_sqlite_refuses_them(app: App) -> None:
    """Table-less writes: on PostgreSQL the events go into the log (`tests/test_relay_wal_messages.py`
    reads them there), their versions count on as rows' would; SQLite has no such log."""
    unit = app.unit(OutboxSettings(write_as="message"))
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    if app.engine.dialect.name == "sqlite":
        with pytest.raises(ConfigurationError, match=r"OUTBOXKIT_OUTBOX_WRITE_AS=message .* set it to row"):
            unit.commit()
        unit.rollback()
        assert_nothing_committed(app)
        return
    unit.publish(OrderShipped(order_id=1, carrier="dhl"))
    unit.commit()
    assert app.rows() == []
    assert app.count(Order) == 1
    with app.engine.connect() as conn:
        assert conn.execute(select(versions_table.c.version)).scalars().all() == [2]


def test_a_payload_that_is_not_json_is_refused_with_the_business_rows(app: App) -> None:
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    with pytest.raises(PayloadError, match=r"PriceChanged\.v2.*product A-1 is not JSON-serialisable"):
        unit.publish(PriceChanged(sku="A-1", price=float("nan")))
    unit.rollback()
    assert_nothing_committed(app)


def test_an_oversized_payload_is_refused_with_the_business_rows(app: App) -> None:
    unit = app.unit(OutboxSettings(max_payload_bytes=500))
    unit.add(Order(id=1, customer="ada", amount_cents=100, note="x" * 600))
    with pytest.raises(
        PayloadTooLargeError, match=r"'OrderCreated' event of order 1 is \d+ bytes, above the limit of 500"
    ):
        unit.commit()
    unit.rollback()
    assert_nothing_committed(app)


def test_a_reserved_header_is_refused(app: App) -> None:
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    with pytest.raises(HeaderError, match="outboxkit-event-id are reserved"):
        unit.publish(OrderShipped(order_id=1, carrier="dhl"), headers={"outboxkit-event-id": "mine"})
    unit.rollback()
    assert_nothing_committed(app)


def test_an_invalid_topic_is_refused_at_flush(app: App) -> None:
    unit = app.unit(OutboxSettings(topic_template="events for {aggregate_type}"))
    unit.add(Customer(id=1, name="ada", email="a@example.com"))
    with pytest.raises(TopicError, match="'events for customer' is not a valid Kafka topic name"):
        unit.commit()
    unit.rollback()
    assert app.count(Customer) == 0
    assert app.rows() == []


class LongTyped(Event, topic="shop.prices", aggregate_type="product", key="sku", event_type="E" * 256):
    sku: str


class LongAggregated(Event, topic="shop.prices", aggregate_type="a" * 256, key="sku"):
    sku: str


@pytest.mark.parametrize(
    ("event", "column"),
    [
        (PriceChanged(sku="s" * 256, price=1.0), "aggregateid"),
        (LongTyped(sku="A-1"), "type"),
        (LongAggregated(sku="A-1"), "aggregatetype"),
    ],
    ids=["key", "event-type", "aggregate-type"],
)
def test_a_value_longer_than_its_outbox_column_is_refused_with_the_business_rows_on_every_dialect(
    app: App, event: Event, column: str
) -> None:
    unit = app.unit()
    unit.add(Order(id=1, customer="ada", amount_cents=100))
    with pytest.raises(ValueTooLongError, match=f"its {column} is 256 characters, above the limit of 255"):
        unit.publish(event)
    unit.rollback()
    assert_nothing_committed(app)


def test_a_composite_key_longer_than_the_outbox_holds_is_refused_at_flush(app: App) -> None:
    unit = app.unit()
    unit.add(Stock(warehouse="w" * 200, sku="s:" * 50, quantity=1))  # 200 + 1 + 150 with the escapes
    with pytest.raises(
        ValueTooLongError,
        match=r"the 'StockCreated' event of stock w{40}\.\.\.: its aggregateid is 351 characters, above",
    ):
        unit.commit()
    unit.rollback()
    assert app.count(Stock) == 0
    assert app.rows() == []


@pytest.mark.parametrize(
    "statement",
    [
        update(Order).values(amount_cents=1),
        delete(Order).where(Order.id == 1),
        insert(Order).values(id=5, customer="eve", amount_cents=5),
    ],
    ids=["update", "delete", "insert"],
)
def test_bulk_orm_statements_on_outbox_models_are_refused(app: App, statement: Any) -> None:
    unit = app.unit()
    with pytest.raises(BulkOperationError, match="bypasses outbox capture"):
        unit.execute(statement)
    unit.execute(insert(AuditLog).values(line="bulk statements on other models are fine"))
    unit.commit()
    assert app.count(AuditLog) == 1


# --- the trace goes on from the app's span -----------------------------------------------------


def test_each_row_carries_the_trace_context_of_the_span_it_was_written_in(app: App) -> None:
    tracer = TracerProvider().get_tracer("test")
    unit = app.unit()
    with tracer.start_as_current_span("place order") as span:
        unit.add(Order(id=1, customer="ada", amount_cents=100))
        unit.publish(OrderShipped(order_id=1, carrier="dhl"))
        unit.commit()
    unit.add(Order(id=2, customer="bob", amount_cents=200))  # written outside any span
    unit.commit()

    context = span.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert [json.loads(row.headers).get("traceparent") for row in app.rows()] == [
        traceparent,
        traceparent,
        None,
    ]
