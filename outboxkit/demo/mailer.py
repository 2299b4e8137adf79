"""The demo's e-mail service: the job the shop enqueues with each order, and where its effect lands.

`send_order_confirmation` "sends" an order's confirmation by writing a row into `confirmations`, in
the service's own SQLite database (`worker.db`, not the shop's): a service with a database of its
own, as an e-mail service is. The table has no unique constraint on the message id on purpose:
nothing but the inbox (`@inbox.exactly_once`, the message id in `outbox_job_inbox` in the same
transaction as the row) keeps a redelivered job from sending twice, so a count per message id
shows whether it did.

`Mailer` is used on both sides: the worker process (`outboxkit.demo.worker`) declares the actor
on the broker it consumes from; the demo process declares it on the shop's broker, which
`outbox.jobs.enqueue` checks the job against, and reads the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import dramatiq
from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session

from jobs.inbox import Inbox, InboxCounts, current_message
from outbox import schema
from outboxkit.databases import app_engine

ACTOR: Final = "send_order_confirmation"
metadata = MetaData()
confirmations = Table(
    "confirmations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(36), nullable=False),  # not unique: the inbox alone keeps it once
    Column("order_id", BigInteger, nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def send_order_confirmation(session: Session, order_id: int) -> None:
    """The actor's body: one confirmation row, committed with the job's inbox row or not at all."""
    session.execute(insert(confirmations).values(message_id=current_message().message_id, order_id=order_id))


@dataclass(frozen=True)
class Sent:
    """What the service's database shows: how often each job's effect happened, and what the inbox
    absorbed."""

    runs: dict[str, int]  # confirmation rows per message id
    inbox: InboxCounts

    @property
    def twice(self) -> int:
        """Jobs whose effect happened more than once: must be 0."""
        return sum(1 for count in self.runs.values() if count > 1)


class Mailer:
    """The e-mail service's database (SQLite, WAL: the demo reads while the worker writes) and inbox."""

    def __init__(self, db_url: str) -> None:
        self.engine = app_engine(db_url, 2)
        self.inbox = Inbox(self.engine)

    def migrate(self) -> None:
        """The inbox table by outboxkit's migrations (`outboxkit migrate`), then the service's own."""
        schema.upgrade(self.engine)
        metadata.create_all(self.engine)

    def declare(self, broker: dramatiq.Broker, queue: str) -> dramatiq.Actor[Any, Any]:
        """`send_order_confirmation` on `broker`, on the run's `queue`, run at most once per message."""
        declare = dramatiq.actor(broker=broker, actor_name=ACTOR, queue_name=queue)
        return declare(self.inbox.exactly_once(send_order_confirmation))

    def sent(self) -> Sent:
        query = select(confirmations.c.message_id, func.count()).group_by(confirmations.c.message_id)
        with self.engine.connect() as conn:
            runs = {message_id: int(count) for message_id, count in conn.execute(query)}
        return Sent(runs, self.inbox.counts())

    def executed(self) -> int:
        """Jobs that ran at least once (for the progress lines)."""
        query = select(func.count(func.distinct(confirmations.c.message_id)))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def close(self) -> None:
        self.engine.dispose()
