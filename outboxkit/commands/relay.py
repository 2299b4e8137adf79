"""`outboxkit relay run|status`: publish the outbox to Kafka, or report how far it is."""

from __future__ import annotations

import argparse

from outboxkit.commands import Commands
from outboxkit.commands.processes import run_and_status
from outboxkit.failures import Named
from relay import RelaySettings, relay_from_settings
from relay.names import SERVICE as RELAY_SERVICE
from relay.status import relay_status
from runtime.process import ExitCode, StopFlag
from runtime.telemetry import traced


def register(commands: Commands) -> None:
    run_and_status(
        commands,
        "relay",
        "publish the outbox to Kafka",
        run=_run,
        status=_status,
        status_help="backlog, oldest waiting event, checkpoint and lease holder per shard, quarantine",
    )


def _run(args: argparse.Namespace, named: Named) -> int:
    settings = named.load(RelaySettings)
    stop = StopFlag()
    with traced(RELAY_SERVICE):
        relay_from_settings(settings, stop).run(stop, drain=args.drain)
    return ExitCode.OK


def _status(args: argparse.Namespace, named: Named) -> int:
    report = relay_status(named.load(RelaySettings))
    print(report.to_json() if args.json else report.render())
    return ExitCode.OK
