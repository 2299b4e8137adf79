"""`outboxkit relay run|status|reset-slot|drop-slot`: publish the outbox to Kafka, report how far
it is, recreate the replication slots PostgreSQL invalidated, or drop a retired source's slots
(the last two for WAL capture)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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

    def warning(settings: RelaySettings) -> str:
        return (
            f"outboxkit relay reset-slot recreates each lost or missing replication slot of source "
            f"{settings.source_id} and publishes what its outbox table holds that Kafka does not (see the "
            "README: it reads the outbox's topics back whole)"
        )

    def reset(settings: RelaySettings) -> str:
        done = reset_slots(settings)
        nothing = "every slot of the source can go on: nothing to reset"
        return "\n".join(item.render() for item in done) or nothing

    return _slot_command(args, named, "reset-slot", warning, reset)


def _drop_slot(args: argparse.Namespace, named: Named) -> int:
    from relay.slot_commands import drop_slots

    def warning(settings: RelaySettings) -> str:
        return (
            f"outboxkit relay drop-slot drops the replication slots and publications of source "
            f"{settings.source_id}: rows its relays have not published are never captured"
        )

    def drop(settings: RelaySettings) -> str:
        dropped = drop_slots(settings)
        nothing = "the source has no replication slot: nothing to drop"
        return f"dropped {', '.join(dropped)}" if dropped else nothing

    return _slot_command(args, named, "drop-slot", warning, drop)


def _slot_command(
    args: argparse.Namespace,
    named: Named,
    command: str,
    warning: Callable[[RelaySettings], str],
    act: Callable[[RelaySettings], str],
) -> int:
    """A command that changes a wal source's slots: it says what it would do (`warning`) unless
    given --yes, and then does it (`act`), printing the outcome."""
    settings = _wal_settings(named, command)
    if not args.yes:
        return _confirm(warning(settings))
    print(act(settings))
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
