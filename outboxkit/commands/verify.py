"""`outboxkit verify`: committed events reached Kafka and the warehouse exactly once, in order."""

from __future__ import annotations

import argparse

from outboxkit.commands import Commands
from outboxkit.failures import Named
from runtime.process import ExitCode


def register(commands: Commands) -> None:
    check = commands.add_parser(
        "verify",
        help="check that committed events reached Kafka and the warehouse exactly once, in per-key order "
        "(settings from OUTBOXKIT_VERIFY_*)",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=_verify, extras="sink,duckdb")  # Kafka's consumer, the default warehouse


def _verify(args: argparse.Namespace, named: Named) -> int:
    from verify import VerifySettings, verify

    findings = verify(named.load(VerifySettings))
    print(findings.to_json() if args.json else findings.render())
    return ExitCode.OK if findings.ok else ExitCode.ERROR
