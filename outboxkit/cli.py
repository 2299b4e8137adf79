"""The `outboxkit` command: `demo`, `migrate`, `relay run|status`, `sink run|status|replay`, `verify`.

Exit codes are named (relay.ExitCode) so a supervisor can tell a fenced zombie from a crash. A
failure is one line naming the setting behind it (`outboxkit.failures`), never a traceback — but
for a bug.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType

from alembic.util import CommandError
from sqlalchemy import make_url

from outbox import schema
from outbox.telemetry import traced
from outbox.urls import parsed_url
from outboxkit import __version__
from outboxkit.failures import Failure, Named, explain
from relay import ExitCode, RelaySettings, relay_from_settings
from relay.names import SERVICE as RELAY_SERVICE
from relay.status import relay_status
from sink import SinkSettings, SinkStats, sink_from_settings
from sink.names import SERVICE as SINK_SERVICE
from sink.replay import replay, skip
from sink.run import tune_gc
from sink.status import sink_status
from verify import VerifySettings, verify

TOOLS = {"status", "replay", "skip", "verify"}  # commands that answer and end: their output stays clean


class StopFlag:
    """Set by SIGTERM/SIGINT; the loops finish their current transaction and return."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def __call__(self) -> bool:
        return self.stopped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outboxkit", description="Exactly-once events: app DB -> Kafka -> warehouse"
    )
    parser.add_argument("--version", action="version", version=f"outboxkit {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="a shop writing continuously -> outbox -> relay -> Kafka -> sink -> warehouse, with live "
        "progress and a closing comparison of the app's and the warehouse's tables",
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
        help="keep the SQLite and DuckDB files here, replaced at each run (default: a temp dir, removed)",
    )

    migrate = commands.add_parser(
        "migrate", help="create or upgrade the outbox tables (Alembic, own version table)"
    )
    migrate.add_argument(
        "--url", required=True, type=_database_url, help="SQLAlchemy URL of the application database"
    )
    migrate.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    migrate.add_argument(
        "--downgrade", action="store_true", help="go down to REVISION instead ('base' drops the tables)"
    )

    groups = {}
    for name, what in (
        ("relay", "publish the outbox to Kafka"),
        ("sink", "write Kafka topics to the warehouse"),
    ):
        group = groups[name] = commands.add_parser(name, help=what).add_subparsers(
            dest="action", required=True
        )
        run = group.add_parser("run", help=f"{what} (settings from OUTBOXKIT_{name.upper()}_* and .env)")
        run.add_argument("--drain", action="store_true", help="exit once there is nothing left to do")
        status = group.add_parser(
            "status",
            help="backlog, oldest waiting event, checkpoint and lease holder per shard, quarantine"
            if name == "relay"
            else "stored offset, lag and stop reason per partition, tables, dead letters",
        )
        status.add_argument("--json", action="store_true", help="machine-readable output")
    chaos = commands.add_parser(
        "chaos",
        help="the proof: workload + relays + sinks as processes + injected faults, judged by verify",
    )
    chaos.add_argument("--seconds", type=float, help="at most this long (default 170)")
    chaos.add_argument(
        "--events",
        type=int,
        help="end once this many events are committed... (default 50000; 0: run --seconds)",
    )
    chaos.add_argument("--faults", type=int, help="...and this many faults injected (default 20)")
    chaos.add_argument("--rate", type=float, help="events/s the workload offers (default 520)")
    chaos.add_argument(
        "--mix",
        type=_assignments,
        default={},
        metavar="NAME=VALUE,...",
        help="the workload's mix, e.g. hot=0.3,rollback=0.2,late=0.05,writers=4 (see Mix in outboxkit.chaos)",
    )
    chaos.add_argument("--fault-every", type=float, help="seconds between faults (default 5.5)")
    chaos.add_argument(
        "--restart-services",
        action="store_true",
        help="also stop and start Kafka and PostgreSQL (./scripts/services)",
    )
    check = commands.add_parser(
        "verify",
        help="check that committed events reached Kafka and the warehouse exactly once, in per-key order "
        "(settings from OUTBOXKIT_VERIFY_*)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    replay = groups["sink"].add_parser(
        "replay", help="rewind the stored offsets so a sink reprocesses a range (idempotently)"
    )
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-offset", type=int, help="offset to start again from (every partition)")
    start.add_argument(
        "--from-timestamp",
        type=datetime.fromisoformat,
        help="ISO time, e.g. 2026-11-26T08:00:00+00:00: the first record at or after it",
    )
    replay.add_argument("--topic", action="append", help="only this topic (repeatable; default: all)")
    replay.add_argument("--partition", type=int, help="only this partition")
    skip = groups["sink"].add_parser(
        "skip",
        help="accept a gap: move a stopped partition's stored offset forward (gives up what is before)",
    )
    skip.add_argument("--topic", required=True)
    skip.add_argument("--partition", type=int, required=True)
    skip.add_argument("--to-offset", type=int, required=True, help="the first offset to read again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    named = Named(" ".join(filter(None, (args.command, getattr(args, "action", None)))))
    if {args.command, getattr(args, "action", None)} & TOOLS:
        # What librdkafka retries, and our own "unreachable, retrying", only come before the same
        # news in the tool's closing line (or are no news at all when it answers).
        logging.getLogger("outboxkit.kafka").setLevel(logging.ERROR)
    commands: dict[str, Callable[[argparse.Namespace, Named], int]] = {
        "demo": _demo,
        "migrate": _migrate,
        "relay": _relay,
        "sink": _sink,
        "verify": _verify,
        "chaos": _chaos,
    }
    try:
        return commands[args.command](args, named)
    except Exception as exc:
        failure = explain(exc, named)
        if failure is None:
            raise  # not foreseen: a bug, whose traceback helps
        return _failed(named, failure)


def _failed(named: Named, failure: Failure) -> int:
    print(f"outboxkit {named.command}: {failure.message}", file=sys.stderr)
    return failure.exit_code


def _relay(args: argparse.Namespace, named: Named) -> int:
    settings = named.load(RelaySettings)
    if args.action == "status":
        report = relay_status(settings)
        print(report.to_json() if args.json else report.render())
    else:
        stop = StopFlag()
        with traced(RELAY_SERVICE):
            relay_from_settings(settings, stop).run(stop, drain=args.drain)
    return ExitCode.OK


def _sink(args: argparse.Namespace, named: Named) -> int:
    settings = named.load(SinkSettings)
    if args.action == "status":
        report = sink_status(settings)
        print(report.to_json() if args.json else report.render())
    elif args.action == "skip":
        now = skip(settings, args.topic, args.partition, args.to_offset)
        stored = "none (nothing to skip)" if now is None else now
        print(f"{args.topic}[{args.partition}]: stored offset {stored}; restart the sink to read on from it")
    elif args.action == "replay":
        moved = replay(
            settings,
            from_offset=args.from_offset,
            from_timestamp=args.from_timestamp,
            topics=args.topic,
            partition=args.partition,
        )
        for (topic, partition), offset in sorted(moved.items()):
            print(f"{topic}[{partition}]: stored offset rewound to {offset}")
        print(f"{len(moved)} partition(s) rewound; a running sink re-reads them at its next batch")
    else:
        with traced(SINK_SERVICE):
            stats = _run_sink(settings, drain=args.drain)
        print(
            f"outboxkit sink: {stats.applied} applied, {stats.skipped} skipped as duplicates, "
            f"{stats.dead_letters} dead letter(s) in {stats.batches} batch(es)",
            file=sys.stderr,
        )
    return ExitCode.OK


def _run_sink(settings: SinkSettings, *, drain: bool) -> SinkStats:
    sink = sink_from_settings(settings)
    tune_gc()
    return sink.run(StopFlag(), drain=drain)


def _chaos(args: argparse.Namespace, named: Named) -> int:
    from outboxkit.chaos import ChaosSettings, run_chaos  # noqa: PLC0415 - models load only when asked for

    flags = {"seconds": args.seconds, "events": args.events, "faults": args.faults}
    flags["fault_every"] = args.fault_every
    given = {name: value for name, value in flags.items() if value is not None}
    mix = args.mix | ({"rate": args.rate} if args.rate is not None else {})
    settings = named.load(ChaosSettings, **given)
    settings = named.load(ChaosSettings, **given, mix=settings.mix.model_dump() | mix)
    report = run_chaos(settings, _restart_service if args.restart_services else None)
    print(report.render())
    return ExitCode.OK if report.ok else ExitCode.ERROR


def _assignments(text: str) -> dict[str, str]:
    """`a=1,b=2` as {"a": "1", "b": "2"}; the settings class validates the values."""
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if any(not sep or not name.strip() for name, sep, _ in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE,... not {text!r}")
    return {name.strip(): value.strip() for name, _, value in pairs}


def _restart_service(name: str) -> None:
    """Stop a local service and start it again, through this checkout's `scripts/services`."""
    script = Path("scripts") / "services"
    if not script.exists():
        raise SystemExit("--restart-services needs ./scripts/services: run it from an outboxkit checkout")
    for action in ("down", "up"):
        command = [sys.executable, str(script), action, name]
        subprocess.run(command, check=True, capture_output=True, timeout=300)  # noqa: S603 - fixed, ours


def _verify(args: argparse.Namespace, named: Named) -> int:
    findings = verify(named.load(VerifySettings))
    print(findings.to_json() if args.json else findings.render())
    return ExitCode.OK if findings.ok else ExitCode.ERROR


def _database_url(text: str) -> str:
    """`--url`, refused by argparse (exit 2, naming the flag) when it cannot work."""
    try:
        parsed_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _migrate(args: argparse.Namespace, named: Named) -> int:
    named.database("--url", args.url)
    try:
        (schema.downgrade if args.downgrade else schema.upgrade)(args.url, args.revision)
    except CommandError as exc:  # Alembic's: an unknown revision, say
        return _failed(named, Failure(str(exc), ExitCode.ERROR))
    print(f"outboxkit migrate: the outbox tables are at {args.revision} in {make_url(args.url)!r}")
    return ExitCode.OK


def _demo(args: argparse.Namespace, named: Named) -> int:
    from outboxkit.demo import DemoSettings, run_demo  # noqa: PLC0415 - models load only when asked for

    flags = {name: getattr(args, name) for name in ("seconds", "rate", "writers", "app_db", "warehouse")}
    settings = named.load(DemoSettings, **{name: value for name, value in flags.items() if value is not None})
    named.bootstrap = ("OUTBOXKIT_DEMO_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    named.remedy = (
        "`scripts/services up` starts the local services (or set OUTBOXKIT_PG_URL, OUTBOXKIT_KAFKA_BOOTSTRAP)"
    )
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("outboxkit.kafka").setLevel(logging.ERROR)  # transient coordinator retries: noise here
    with tempfile.TemporaryDirectory(prefix="outboxkit-demo-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_demo(settings, workdir, sys.stdout, StopFlag())
    return ExitCode.OK if report.ok else ExitCode.ERROR


if __name__ == "__main__":
    sys.exit(main())
