"""Models the outbox specifications run against: one per way a model can configure capture."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from outbox import Event, Outbox, OutboxMixin


class Base(DeclarativeBase):
    pass


class Order(OutboxMixin, Base):
    __tablename__ = "orders"
    __outbox__ = Outbox(topic="shop.orders", aggregate_type="order")

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    amount_cents: Mapped[int]
    note: Mapped[str | None] = mapped_column(String(2000), default=None)


class CustomerView(BaseModel):
    """The public shape of a customer: `email` stays out of events."""

    id: int
    name: str


class Customer(OutboxMixin, Base):
    __tablename__ = "customers"
    __outbox__ = Outbox(aggregate_type="customer", payload=CustomerView, deleted=None)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(100))


class Shipment(OutboxMixin, Base):
    __tablename__ = "shipments"
    __outbox__ = Outbox(topic="shop.shipments", key="order_id", payload=["order_id", "carrier"], updated=None)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int]
    carrier: Mapped[str] = mapped_column(String(50))


class Thing(OutboxMixin, Base):
    """What the pipeline tests write: events keyed by `group`, routed by the session's topic template."""

    __tablename__ = "things"
    __outbox__ = Outbox(aggregate_type="thing", key="group")

    id: Mapped[int] = mapped_column(primary_key=True)
    group: Mapped[str] = mapped_column(String(50))
    n: Mapped[int]
    note: Mapped[str | None] = mapped_column(Text, default=None)


class Product(OutboxMixin, Base):
    """A single-column text primary key: the aggregate id is that value exactly, `:` and all."""

    __tablename__ = "products"
    __outbox__ = Outbox(aggregate_type="product")

    sku: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)


class Stock(OutboxMixin, Base):
    """A composite primary key: the aggregate id encodes both parts. Text, so length limits are
    the outbox's own, not the business table's."""

    __tablename__ = "stock"
    __outbox__ = Outbox(aggregate_type="stock")

    warehouse: Mapped[str] = mapped_column(Text, primary_key=True)
    sku: Mapped[str] = mapped_column(Text, primary_key=True)
    quantity: Mapped[int]


class AuditLog(Base):
    """A model without the mixin: bulk statements on it stay allowed."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    line: Mapped[str] = mapped_column(String(200))


class OrderShipped(Event, topic="shop.orders", aggregate_type="order", key="order_id"):
    order_id: int
    carrier: str


class PriceChanged(
    Event, topic="shop.prices", aggregate_type="product", key="sku", event_type="PriceChanged.v2"
):
    sku: str
    price: float


class ThingFlagged(Event, aggregate_type="thing", key="group"):
    """No topic: routed like its aggregate's model events, by the session's topic template."""

    group: str
    reason: str
