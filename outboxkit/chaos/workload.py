"""A workload like an application's: concurrent writers, hot keys, late commits, rollbacks.

Accounts (a model with `OutboxMixin`) are opened, updated — most updates on a few hot accounts,
so writers contend for the same aggregate versions — and closed. Some transactions stay open for
a while before they commit (a capture that polls by id would skip them); some roll back, whole or
to a savepoint, and must leave no event behind.
"""

from __future__ import annotations

import random
import threading
import time

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from outbox import SETTINGS_KEY, Outbox, OutboxMixin, OutboxSettings
from outboxkit.writers import Writers


class Base(DeclarativeBase):
    pass


class Account(OutboxMixin, Base):
    """Emits AccountCreated / AccountUpdated / AccountDeleted."""

    __tablename__ = "chaos_accounts"
    __outbox__ = Outbox(aggregate_type="account", created="AccountCreated", updated="AccountUpdated")

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    balance: Mapped[int]


class Mix(BaseModel):
    """What the workload offers: events per second over `writers` threads, and the weights of
    transaction kinds against plain updates (weight 1).

    Set as `OUTBOXKIT_CHAOS_MIX__HOT=0.3`, or `outboxkit chaos --mix hot=0.3,rollback=0.2`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(400.0, gt=0)
    writers: int = Field(4, ge=1)
    create: float = 0.15
    delete: float = 0.02
    hot: float = 0.1  # of updates, on one of the `hot_keys` accounts
    late: float = 0.02  # opens accounts, stays open `late_seconds`, then commits
    rollback: float = 0.08
    savepoint: float = 0.05  # part of the work rolled back to a savepoint, the rest committed
    hot_keys: int = 10
    late_seconds: float = 1.5
    events_per_txn: int = 8


class Workload(Writers):
    """`writers` threads offering about `rate` events per second in total until stopped."""

    def __init__(self, engine: Engine, settings: OutboxSettings, mix: Mix, seed: int = 1) -> None:
        super().__init__(writers=mix.writers, rate=mix.rate, seed=seed)
        self._sessions = sessionmaker(engine, info={SETTINGS_KEY: settings})
        self._mix = mix
        self._ids_lock = threading.Lock()
        self._ids: list[int] = []

    def start(self) -> None:
        with self._sessions.begin() as session:  # a few accounts to update from the start
            session.add_all(Account(owner=f"seed-{n}", balance=0) for n in range(self._mix.hot_keys * 2))
        with self._sessions() as session:
            self._ids = list(session.scalars(select(Account.id)))
        super().start()

    def one(self, rng: random.Random) -> tuple[str, int]:
        return self._transaction(rng), self._mix.events_per_txn

    def _transaction(self, rng: random.Random) -> str:
        mix = self._mix
        kind = rng.choices(
            ["create", "delete", "rollback", "savepoint", "late", "update"],
            [mix.create, mix.delete, mix.rollback, mix.savepoint, mix.late, 1.0],
        )[0]
        opened: list[Account] = []
        with self._sessions() as session:
            if kind in ("create", "late"):  # a late commit holds no hot key: it would stall everyone
                opened = [
                    Account(owner=f"o{rng.randrange(10**6)}", balance=0) for _ in range(mix.events_per_txn)
                ]
                session.add_all(opened)
                session.flush()
            elif kind == "delete":
                self._close_one(session, rng)
            else:
                self._update(session, rng, mix.events_per_txn)
            if kind == "savepoint":
                nested = session.begin_nested()
                self._update(session, rng, 1)
                session.flush()
                nested.rollback()
            if kind == "late":
                session.flush()
                time.sleep(mix.late_seconds)
            if kind == "rollback":
                session.flush()
                session.rollback()
            else:
                new_ids = [account.id for account in opened]
                session.commit()
                with self._ids_lock:
                    self._ids.extend(new_ids)
        return kind

    def _pick(self, rng: random.Random) -> int:
        with self._ids_lock:
            if rng.random() < self._mix.hot:
                return self._ids[rng.randrange(min(self._mix.hot_keys, len(self._ids)))]
            return self._ids[rng.randrange(len(self._ids))]

    def _update(self, session: Session, rng: random.Random, count: int) -> None:
        for account_id in sorted({self._pick(rng) for _ in range(count)}):  # sorted: no deadlocks
            account = session.get(Account, account_id)
            if account is not None:
                account.balance += rng.randrange(1, 100)
        session.flush()

    def _close_one(self, session: Session, rng: random.Random) -> None:
        with self._ids_lock:
            candidates = self._ids[self._mix.hot_keys :]
            if not candidates:
                return
            victim = candidates[rng.randrange(len(candidates))]
            self._ids.remove(victim)
        account = session.get(Account, victim)
        if account is not None:
            session.delete(account)
