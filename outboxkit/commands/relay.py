"""`outboxkit relay run|status|reset-slot`: publish the outbox to Kafka, report how far it is, or
recreate the replication slots PostgreSQL invalidated (WAL capture)."""

from __future__ import annotations

import argparse

from outboxkit.commands import Commands
from outboxkit.commands.processes import run_and_status
from outboxkit.failures import Named
from runtime.process import ExitCode, StopFlag


def register(commands: Commands) -> None:
    actions = run_and_status(
        commands,
        "relay",
        "publish the outbox to Kafka",
        run=_run,
        status=_status,
        status_help="backlog, oldest waiting event, checkpoint and lease holder per shard, dead letters",
        extras="relay",
    )
    reset = actions.add_parser(
        "reset-slot",
        help="WAL capture: recreate the source's lost (invalidated) or missing replication slots, and "
        "publish from the outbox table what is not in Kafka yet (the relays stopped first)",
    )
    reset.add_argument("--yes", action="store_true", help="do it (it reads the outbox's topics back whole)")
    reset.set_defaults(handler=_reset_slot)


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


def _reset_slot(args: argparse.Namespace, named: Named) -> int:
    from relay import RelaySettings
    from relay.errors import ConfigError
    from relay.slot_reset import reset_slots

    settings = named.load(RelaySettings)
    if settings.capture != "wal":
        raise ConfigError(
            "reset-slot is for WAL capture: set OUTBOXKIT_RELAY_CAPTURE=wal, as the relays have"
        )
    if not args.yes:
        print(
            "outboxkit relay reset-slot recreates each lost or missing replication slot of source "
            f"{settings.source_id} and publishes what its outbox table holds that Kafka does not (see the "
            "README: it reads the outbox's topics back whole). Stop the source's relays, then run it "
            "again with --yes"
        )
        return ExitCode.CONFIG
    done = reset_slots(settings)
    print(
        "\n".join(reset.render() for reset in done) or "every slot of this source can go on: nothing to reset"
    )
    return ExitCode.OK
