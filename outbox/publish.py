"""`publish()`: add a domain event to the outbox inside the caller's transaction.

The row is written with the session's own connection, so it commits or rolls back with the
business data — there is no second system to fail in between (the dual-write problem). Nothing
here talks to Kafka: only the relay publishes, and only what was committed.

Order: pending ORM changes are flushed first (their outbox rows with them), then the event is
written, so outbox rows follow the order of the application's calls.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outbox import rows
from outbox.event import Event
from outbox.settings import settings_for
from outbox.wakeup import wrote_events


def publish(session: Session, event: Event, *, headers: dict[str, str] | None = None) -> str:
    """Write `event` into the outbox in `session`'s current transaction; return its event id.

    Raises an `OutboxError` at once, inside the transaction, for input the wire cannot carry.
    """
    session.flush()
    conn = session.connection()
    settings = settings_for(session)
    [event_id] = rows.write(conn, [event.to_draft(settings, headers)], settings)
    wrote_events(session, conn.engine)
    return event_id


async def publish_async(session: AsyncSession, event: Event, *, headers: dict[str, str] | None = None) -> str:
    """`publish()` for an `AsyncSession`."""
    return await session.run_sync(publish, event, headers=headers)
