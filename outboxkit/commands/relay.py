"""`outboxkit relay run|status|reset-slot|drop-slot`: publish the outbox to Kafka, report how far
it is, recreate the replication slots PostgreSQL invalidated, or drop a retired source's slots
(the last two for WAL capture)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from outboxkit.commands import Commands, Handler
from outboxkit.commands.processes import run_and_status
from outboxkit.failures import Named
from runtime.process import ExitCode, StopFlag

if TYPE_CHECKING:
    from relay import RelaySettings


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
    slot_commands: list[tuple[str, str, str, Handler]] = [
        (
            "reset-slot",
            "WAL capture: recreate the source's lost (invalidated) or missing replication slots, and "
            "publish from the outbox table what is not in Kafka yet (the relays stopped first)",
            "do it (it reads the outbox's topics back whole)",
            _reset_slot,
        ),
        (
            "drop-slot",
            "WAL capture: retire the source — drop its replication slots and publications (the relays "
            "stopped first), releasing the WAL they keep",
            "do it (rows not yet published are never captured)",
            _drop_slot,
        ),
    ]
    for name, what, yes, handler in slot_commands:
        action = actions.add_parser(name, help=what)
        action.add_argument("--yes", action="store_true", help=yes)
        action.set_defaults(handler=handler)


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
    from relay.slot_commands import reset_slots

    settings = _wal_settings(named, "reset-slot")
    if not args.yes:
        return _confirm(
            f"outboxkit relay reset-slot recreates each lost or missing replication slot of source "
            f"{settings.source_id} and publishes what its outbox table holds that Kafka does not (see the "
            "README: it reads the outbox's topics back whole)"
        )
    done = reset_slots(settings)
    print(
        "\n".join(reset.render() for reset in done) or "every slot of the source can go on: nothing to reset"
    )
    return ExitCode.OK


def _drop_slot(args: argparse.Namespace, named: Named) -> int:
    from relay.slot_commands import drop_slots

    settings = _wal_settings(named, "drop-slot")
    if not args.yes:
        return _confirm(
            f"outboxkit relay drop-slot drops the replication slots and publications of source "
            f"{settings.source_id}: rows its relays have not published are never captured"
        )
    dropped = drop_slots(settings)
    print(
        f"dropped {', '.join(dropped)}" if dropped else "the source has no replication slot: nothing to drop"
    )
    return ExitCode.OK


def _wal_settings(named: Named, command: str) -> RelaySettings:
    from relay import RelaySettings
    from relay.errors import ConfigError

    settings = named.load(RelaySettings)
    if settings.capture != "wal":
        raise ConfigError(f"{command} is for WAL capture: set OUTBOXKIT_RELAY_CAPTURE=wal, as for the relays")
    return settings


def _confirm(what: str) -> int:
    """Say what the command would do, and how to have it done: nothing happens without --yes."""
    print(f"{what}. Stop the source's relays, then run it again with --yes")
    return ExitCode.CONFIG
