"""The demo's verdict: the app's tables against the warehouse's, row by row, `verify`, and the jobs.

Views that do not share code with the pipeline: a plain comparison of the business columns
(what a user would check by hand); the independent checker, which reads Kafka with its own
read_committed consumer and finds lost, duplicated, reordered, phantom and stale events; and the
jobs the app committed (its `outbox_versions`) against the confirmations in the e-mail service's
database, counted per message id.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Connection, create_engine, inspect, text

from outboxkit.databases import committed_jobs
from outboxkit.demo.mailer import Mailer, Sent
from outboxkit.demo.stage import Stage
from verify import Findings, VerifySettings, verify

# Per current-state table, the business columns events carry (a customer's e-mail stays out).
COMPARED = {"customers": ["id", "name", "tier"], "orders": ["id", "customer_id", "amount_cents", "status"]}
LOGS = ("customer_events", "order_events")
EXAMPLES = 3


@dataclass
class TableCheck:
    table: str
    app: int
    warehouse: int
    equal: int
    wrong: list[str] = field(default_factory=list)  # the first few ids missing, extra or different

    @property
    def ok(self) -> bool:
        return self.app == self.warehouse == self.equal


@dataclass
class JobsCheck:
    """The jobs committed (their message ids), those rolled back, and what the worker's database shows."""

    committed: set[str]
    rolled_back: set[str]
    sent: Sent

    @property
    def missing(self) -> int:
        return len(self.committed - self.sent.runs.keys())

    @property
    def ran_rolled_back(self) -> int:
        """Jobs that ran without being committed: a rolled-back one, or one the app never wrote."""
        return len(self.sent.runs.keys() - self.committed)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.ran_rolled_back or self.sent.twice)

    def render(self) -> list[str]:
        executed = len(self.committed & self.sent.runs.keys())
        return [
            "jobs (send_order_confirmation: outbox -> relay -> Kafka -> dispatcher -> Redis -> worker):",
            f"  enqueued (committed) {len(self.committed):,}, executed {executed:,}, "
            f"executed twice {self.sent.twice} (must be 0), missing {self.missing}",
            f"  duplicates absorbed by the worker's inbox: {self.sent.inbox.duplicates}",
            f"  rolled back: {len(self.rolled_back):,} job(s) of failed checkouts; "
            f"run: {self.ran_rolled_back} (must be 0)",
        ]


@dataclass
class Summary:
    tables: list[TableCheck]
    written: int
    logged: dict[str, int]  # rows per event-log table
    duplicates: int  # event ids more than once across the logs
    done: Counter[str]  # the shop's transactions by action
    findings: dict[str, Findings]  # verify's, per aggregate type
    jobs: JobsCheck

    @property
    def ok(self) -> bool:
        return (
            self.jobs.ok
            and all(check.ok for check in self.tables)
            and sum(self.logged.values()) == self.written
            and not self.duplicates
            and all(found.ok and not found.pending for found in self.findings.values())
        )

    def render(self) -> str:
        lines = ["", "summary: the app's tables against the warehouse's"]
        lines.append(f"  {'table':<10} {'app rows':>10} {'warehouse rows':>15} {'equal':>8}")
        for check in self.tables:
            wrong = f"   differ: {', '.join(check.wrong)}" if check.wrong else ""
            lines.append(
                f"  {check.table:<10} {check.app:>10,} {check.warehouse:>15,} {check.equal:>8,}{wrong}"
            )
        logs = " + ".join(f"{table} {rows:,}" for table, rows in self.logged.items())
        lines.append(
            f"  {'events':<10} {self.written:>10,} {sum(self.logged.values()):>15,}"
            f"   ({logs}; {self.duplicates} duplicate(s))"
        )
        actions = ", ".join(f"{action} {count}" for action, count in sorted(self.done.items()))
        lines.append(f"  the shop's transactions: {actions}")
        lines.append(
            f"  rolled back: {self.done['failed checkout']} failed checkout(s) — had one of their events "
            "arrived, verify would count it as phantom"
        )
        lines.append("verify (an independent checker: its own read_committed Kafka reader, plain SQL):")
        for aggregate_type, found in self.findings.items():
            lines.append(f"  {aggregate_type}: " + found.render().replace("\n", "\n  "))
        lines += self.jobs.render()
        verdict = (
            "OK: the warehouse matches the app; every committed event landed exactly once, in per-key order; "
            "every committed job ran exactly once in effect, no rolled-back one ran"
            if self.ok
            else "MISMATCH: see above"
        )
        return "\n".join([*lines, verdict, ""])


def summarise(stage: Stage, done: Counter[str], written: int, rolled_back: list[str]) -> Summary:
    app = create_engine(stage.app_url)
    warehouse = create_engine(stage.warehouse_url)
    try:
        with app.connect() as source, warehouse.connect() as target:
            tables = [_compare(source, target, table, columns) for table, columns in COMPARED.items()]
            logged = {table: _count(target, table) for table in LOGS}
            duplicates = _duplicates(target)
        committed = set(committed_jobs(app))
    finally:
        app.dispose()
        warehouse.dispose()
    findings = {kind: verify(_check(stage, kind)) for kind in ("customer", "order")}
    return Summary(tables, written, logged, duplicates, done, findings, _jobs(stage, committed, rolled_back))


def _jobs(stage: Stage, committed: set[str], rolled_back: list[str]) -> JobsCheck:
    mailer = Mailer(stage.worker_url)
    try:
        return JobsCheck(committed, set(rolled_back), mailer.sent())
    finally:
        mailer.close()


def _compare(source: Connection, target: Connection, table: str, columns: list[str]) -> TableCheck:
    app = _rows(source, table, columns, "")
    held = _rows(target, table, columns, " WHERE NOT coalesce(_deleted, FALSE)")
    equal = sum(1 for key, row in app.items() if held.get(key) == row)
    wrong = sorted(
        str(key) for key in app.keys() ^ held.keys() | {k for k in app if k in held and held[k] != app[k]}
    )
    return TableCheck(table, len(app), len(held), equal, wrong[:EXAMPLES])


def _rows(conn: Connection, table: str, columns: list[str], where: str) -> dict[Any, tuple[Any, ...]]:
    if not inspect(conn).has_table(table):
        return {}  # no event reached it
    query = f"SELECT {', '.join(columns)} FROM {table}{where}"
    return {row[0]: tuple(row) for row in conn.execute(text(query))}


def _count(conn: Connection, table: str) -> int:
    if not inspect(conn).has_table(table):
        return 0
    return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _duplicates(conn: Connection) -> int:
    present = [table for table in LOGS if inspect(conn).has_table(table)]
    if not present:
        return 0
    union = " UNION ALL ".join(f"SELECT _event_id FROM {table}" for table in present)
    query = (
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM ({union}) e GROUP BY _event_id) d"
    )
    return int(conn.execute(text(query)).scalar_one())


def _check(stage: Stage, aggregate_type: str) -> VerifySettings:
    return VerifySettings(
        _env_file=None,
        kafka=stage.kafka,
        topics=[stage.topic(aggregate_type)],
        app_database_url=SecretStr(stage.app_url),
        aggregate_types=[aggregate_type],
        warehouse_url=SecretStr(stage.warehouse_url),
        log_table=f"{aggregate_type}_events",
        state_table=f"{aggregate_type}s",
        delete_types=("OrderCancelled",) if aggregate_type == "order" else (),
    )  # the tables themselves were compared row by row above: no need to read them again
