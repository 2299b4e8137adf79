"""Waking the relay when events commit, without slowing the commits (PostgreSQL).

The obvious way — `NOTIFY` inside every writing transaction — serialises commits: PostgreSQL
takes a cluster-wide lock to queue notifications at commit. So the transaction only marks the
session; after it committed, a background thread per engine sends one `NOTIFY` on a connection
of its own, coalescing every commit that happened meanwhile, and at most one every 20 ms: a busy
app pays for ~50 notifications a second however fast it commits, and the relay still hears
within 20 ms. The application's commit never waits for it (B1 measured the whole mechanism at
about 0.03 of the plain transaction rate), and a lost notification costs at most the relay's poll
interval — polling stays the fallback, the notification only makes the relay prompt.
"""

from __future__ import annotations

import threading
import weakref
from functools import cache
from typing import TYPE_CHECKING, Final

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from outbox.errors import ConfigurationError
from outbox.settings import settings_for

if TYPE_CHECKING:
    from outbox.notifier import Notifier

_WROTE: Final = "outboxkit.wrote-to"
_notifiers: weakref.WeakKeyDictionary[Engine, Notifier] = weakref.WeakKeyDictionary()
_notifiers_guard = threading.Lock()


def wrote_events(session: Session, engine: Engine) -> None:
    """Called when `session` wrote outbox rows on `engine`; the relay is woken once it commits.

    The notifier is made here, before the commit, so a missing psycopg fails the write that needs
    it, with what to do, rather than a hook after a commit that already happened."""
    if engine.dialect.name == "postgresql" and (channel := settings_for(session).notify_channel):
        session.info[_WROTE] = _notifier(engine, channel)
        _listen_once()


@cache
def _listen_once() -> None:
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_rollback", _after_rollback)


def _after_commit(session: Session) -> None:
    notifier = session.info.pop(_WROTE, None)
    if notifier is not None:
        notifier.poke()


def _after_rollback(session: Session) -> None:
    session.info.pop(_WROTE, None)


def _notifier(engine: Engine, channel: str) -> Notifier:
    if (notifier := _notifiers.get(engine)) is not None:
        return notifier
    with _notifiers_guard:
        notifier = _notifiers.get(engine)
        if notifier is None:
            try:
                from outbox.notifier import Notifier  # noqa: PLC0415 - psycopg is the `postgres` extra
            except ModuleNotFoundError as exc:
                raise ConfigurationError(
                    f"waking the relay after commits on PostgreSQL needs psycopg 3 ({exc}): "
                    "pip install 'outboxkit[postgres]', or set OUTBOXKIT_OUTBOX_NOTIFY_CHANNEL='' "
                    "and the relay finds the events by polling"
                ) from exc
            notifier = _notifiers[engine] = Notifier(engine, channel)
        return notifier
