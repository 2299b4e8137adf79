"""`outboxkit demo`: a shop writing continuously, end to end to the warehouse, its jobs run by a
Dramatiq worker, with live progress and a closing comparison of the app's and the warehouse's
tables and of the jobs committed and run."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from outboxkit.commands import Commands
from outboxkit.failures import Named
from runtime.process import ExitCode, StopFlag


def register(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a shop writing continuously -> outbox -> relay -> Kafka -> sink -> warehouse, its jobs -> "
        "dispatcher -> Redis -> a dramatiq worker, with live progress and a closing comparison",
    )
    demo.add_argument("--seconds", type=float, help="how long the shop writes (default 20; 0: until Ctrl-C)")
    demo.add_argument("--rate", type=float, help="events per second the shop offers (default 150)")
    demo.add_argument("--writers", type=int, help="writer threads (default 1 on SQLite, 4 on PostgreSQL)")
    demo.add_argument(
        "--app-db", choices=["sqlite", "postgres"], help="the app database (default sqlite, a file)"
    )
    demo.add_argument(
        "--warehouse", choices=["duckdb", "postgres"], help="the warehouse (default duckdb, a file)"
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        help="keep the SQLite and DuckDB files (and worker.log) here, replaced at each run (default: a temp "
        "dir, removed)",
    )
    demo.set_defaults(handler=_demo, extras="relay,sink,duckdb,dramatiq")


def _demo(args: argparse.Namespace, named: Named) -> int:
    from outboxkit.demo import DemoSettings, run_demo

    flags = {name: getattr(args, name) for name in ("seconds", "rate", "writers", "app_db", "warehouse")}
    settings = named.load(DemoSettings, **{name: value for name, value in flags.items() if value is not None})
    named.bootstrap = ("OUTBOXKIT_DEMO_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    named.remedy = (
        "`scripts/services up` starts the local services "
        "(or set OUTBOXKIT_PG_URL, OUTBOXKIT_KAFKA_BOOTSTRAP, OUTBOXKIT_REDIS_URL)"
    )
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("outboxkit.kafka").setLevel(logging.ERROR)  # transient coordinator retries: noise here
    with tempfile.TemporaryDirectory(prefix="outboxkit-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_demo(settings, workdir, sys.stdout, StopFlag())
    return ExitCode.OK if report.ok else ExitCode.ERROR
