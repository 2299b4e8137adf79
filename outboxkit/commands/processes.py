"""What the relay and the sink commands share: their `run` and `status` actions."""

from __future__ import annotations

from outboxkit.commands import Commands, Handler


def run_and_status(
    commands: Commands,
    name: str,
    what: str,
    *,
    run: Handler,
    status: Handler,
    status_help: str,
    extras: str,
) -> Commands:
    """`outboxkit NAME run|status`, which need `extras` installed; returns NAME's actions, for the
    ones only it has."""
    command = commands.add_parser(name, help=what)
    command.set_defaults(extras=extras)
    actions = command.add_subparsers(dest="action", required=True)
    running = actions.add_parser("run", help=f"{what} (settings from OUTBOXKIT_{name.upper()}_* and .env)")
    running.add_argument("--drain", action="store_true", help="exit once there is nothing left to do")
    running.set_defaults(handler=run)
    reporting = actions.add_parser("status", help=status_help)
    reporting.add_argument("--json", action="store_true", help="machine-readable output")
    reporting.set_defaults(handler=status)
    return actions
