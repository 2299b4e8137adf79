"""`outboxkit chaos`: the proof — workload, relays and sinks as processes, injected faults, judged
by verify."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from outboxkit.commands import Commands
from outboxkit.failures import Named
from runtime.process import ExitCode


def register(commands: Commands) -> None:
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
        "--capture",
        help="how the relays read the outbox: poll (default) or wal (a replication slot per shard)",
    )
    chaos.add_argument(
        "--restart-services",
        action="store_true",
        help="also stop and start Kafka and PostgreSQL (./scripts/services)",
    )
    chaos.set_defaults(handler=_chaos, extras="relay,sink,duckdb,wal")  # wal: for --capture wal


def _chaos(args: argparse.Namespace, named: Named) -> int:
    from outboxkit.chaos import ChaosSettings, run_chaos

    flags = {"seconds": args.seconds, "events": args.events, "faults": args.faults}
    flags |= {"fault_every": args.fault_every, "capture": args.capture}
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
