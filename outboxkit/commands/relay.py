"""`outboxkit relay run|status`: publish the outbox to Kafka, or report how far it is."""

from __future__ import annotations

import argparse

from outboxkit.commands import Commands
from outboxkit.commands.processes import run_and_status
from outboxkit.failures import Named
from runtime.process import ExitCode, StopFlag


def register(commands: Commands) -> None:
    run_and_status(
        commands,
        "relay",
        "publish the outbox to Kafka",
        run=_run,
        status=_status,
        status_help="backlog, oldest waiting event, checkpoint and lease holder per shard, dead letters",
        extras="relay",
    )


def _run(args: argparse.Namespace, named: Named) -> int:
    from relay import RelaySettings, relay_from_settings
    from relay.names import SERVICE
    from runtime.telemetry import traced

    settings = named.load(RelaySettings)
    stop = StopFlag()
    with traced(SERVICE):
        relay_from_settings(settings, stop).run(stop, drain=args.drain)
    return ExitCode.OK


def _status(args: argparse.Namespace, named: Named) -> int:
    from relay import RelaySettings
    from relay.status import relay_status

    report = relay_status(named.load(RelaySettings))
    print(report.to_json() if args.json else report.render())
    return ExitCode.OK
