"""The demo's application: a small shop whose customers and orders emit events through the outbox.

`Customer` and `Order` opt in with `OutboxMixin` (a customer's events leave the e-mail address
out); shipping an order also publishes the domain event `OrderShipped`. Each order placed also
enqueues the job `send_order_confirmation` through the outbox (`outbox.jobs.enqueue`), in the
same transaction. `Shop` is the service at work: writer threads sign customers up, place, pay,
ship and cancel orders at a steady rate, and some checkouts fail (rolled back: they must leave no
event behind, and their confirmation jobs must never run; the shop remembers their message ids).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from pydantic import BaseModel
from sqlalchemy import Engine, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox import SETTINGS_KEY, Event, Outbox, OutboxMixin, OutboxSettings, publish
from outbox.jobs import enqueue
from outboxkit.writers import Writers

CARRIERS = ("dhl", "ups", "postnl", "royal-mail")
NAMES = ("ada", "grace", "edsger", "barbara", "donald", "frances", "ken", "margaret", "niklaus")


class Base(DeclarativeBase):
    pass


class CustomerView(BaseModel):
    """What a customer event shows: everything but the e-mail address."""

    id: int
    name: str
    tier: str


class Customer(OutboxMixin, Base):
    """Emits CustomerCreated / CustomerUpdated (upgrades)."""

    __tablename__ = "customers"
    __outbox__ = Outbox(aggregate_type="customer", payload=CustomerView, deleted=None)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(20))


class Order(OutboxMixin, Base):
    """Emits OrderPlaced / OrderUpdated (paid, shipped) / OrderCancelled."""

    __tablename__ = "orders"
    __outbox__ = Outbox(
        aggregate_type="order", created="OrderPlaced", updated="OrderUpdated", deleted="OrderCancelled"
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int]
    amount_cents: Mapped[int]
    status: Mapped[str] = mapped_column(String(20))


class OrderShipped(Event, aggregate_type="order", key="order_id"):
    """A domain event on the order's topic, in order with the order's row changes."""

    order_id: int
    carrier: str


# What the shop does, and how often (weights): each is one transaction.
ACTIONS = {
    "sign up": 2,
    "place orders": 6,
    "pay": 4,
    "ship": 3,
    "cancel": 1,
    "upgrade": 1,
    "failed checkout": 1,  # rolled back
}


class Shop(Writers):
    """The shop at work: `writers` threads offering about `rate` events per second until stopped."""

    def __init__(
        self,
        engine: Engine,
        settings: OutboxSettings,
        confirm: dramatiq.Actor[Any, Any],
        *,
        rate: float,
        writers: int,
        seed: int = 7,
    ) -> None:
        super().__init__(writers=writers, rate=rate, seed=seed)
        self._sessions = sessionmaker(engine, info={SETTINGS_KEY: settings})
        self._confirm = confirm
        self._lock = threading.Lock()
        self._rolled_back: list[str] = []

    @property
    def rolled_back(self) -> list[str]:
        """Message ids of the jobs failed checkouts enqueued before rolling back: none may ever run."""
        with self._lock:
            return list(self._rolled_back)

    def one(self, rng: random.Random) -> tuple[str, int]:
        action = rng.choices(list(ACTIONS), list(ACTIONS.values()))[0]
        with self._sessions() as session:
            return action, self._do(action, session, rng)

    def _do(self, action: str, session: Session, rng: random.Random) -> int:
        """Run one action in `session`; return the events it committed (0: nothing to do)."""
        steps: dict[str, Callable[[Session, random.Random], int]] = {
            "sign up": self._sign_up,
            "place orders": self._place,
            "pay": self._pay,
            "ship": self._ship,
            "cancel": self._cancel,
            "upgrade": self._upgrade,
            "failed checkout": self._failed_checkout,
        }
        events = steps[action](session, rng)
        session.commit()
        return events

    def _sign_up(self, session: Session, rng: random.Random) -> int:
        name = f"{rng.choice(NAMES)}-{rng.randrange(10**6)}"
        session.add(Customer(name=name, email=f"{name}@example.com", tier="basic"))
        return 1

    def _place(self, session: Session, rng: random.Random) -> int:
        customer = _pick(session, Customer.id, Customer.id > 0)
        if customer is None:
            return self._sign_up(session, rng)
        return len(self._orders(session, rng, customer))

    def _orders(self, session: Session, rng: random.Random, customer: int) -> list[str]:
        """Place 1-3 orders for `customer`, each with its confirmation job; the jobs' message ids."""
        orders = [
            Order(customer_id=customer, amount_cents=rng.randrange(500, 50_000), status="placed")
            for _ in range(rng.randint(1, 3))
        ]
        session.add_all(orders)
        session.flush()  # the orders' ids, for their jobs
        confirm = self._confirm
        return [
            enqueue(session, confirm.message(order_id=order.id), broker=confirm.broker).message_id
            for order in orders
        ]

    def _pay(self, session: Session, rng: random.Random) -> int:
        return self._advance(session, "placed", "paid")

    def _ship(self, session: Session, rng: random.Random) -> int:
        order = _lock(session, "paid")
        if order is None:
            return 0
        publish(session, OrderShipped(order_id=order.id, carrier=rng.choice(CARRIERS)))
        order.status = "shipped"  # flushed at commit: the order's last event is its new state
        return 2

    def _cancel(self, session: Session, rng: random.Random) -> int:
        order = _lock(session, "placed")
        if order is None:
            return 0
        session.delete(order)
        return 1

    def _upgrade(self, session: Session, rng: random.Random) -> int:
        customer_id = _pick(session, Customer.id, Customer.tier == "basic")
        customer = session.get(Customer, customer_id, with_for_update=True) if customer_id else None
        if customer is None:
            return 0
        customer.tier = "gold"
        return 1

    def _failed_checkout(self, session: Session, rng: random.Random) -> int:
        """Orders placed, their jobs enqueued, then the payment is declined: it all rolls back."""
        customer = _pick(session, Customer.id, Customer.id > 0)
        if customer is None:
            return 0
        jobs = self._orders(session, rng, customer)  # the outbox rows exist in the transaction...
        session.rollback()  # ...and go with it
        with self._lock:
            self._rolled_back.extend(jobs)
        return 0

    def _advance(self, session: Session, status: str, to: str) -> int:
        order = _lock(session, status)
        if order is None:
            return 0
        order.status = to
        return 1


def _pick(session: Session, column: Any, where: Any) -> Any:
    """A random value of `column` among the rows matching `where`, or None."""
    return session.scalars(select(column).where(where).order_by(func.random()).limit(1)).first()


def _lock(session: Session, status: str) -> Order | None:
    """A random order in `status`, locked (PostgreSQL skips orders another writer holds)."""
    query = select(Order).where(Order.status == status).order_by(func.random()).limit(1)
    return session.scalars(query.with_for_update(skip_locked=True)).first()
