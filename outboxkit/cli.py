"""The `outboxkit` command: `demo`, `migrate`, `relay run|status`, `sink run|status|replay|skip`,
`jobs dispatch|status`, `verify`, `chaos`, each registered by its module in `outboxkit.commands`.

Exit codes are named (runtime.process.ExitCode) so a supervisor can tell a fenced zombie from a crash. A
failure is one line naming the setting behind it (`outboxkit.failures`), never a traceback — but
for a bug.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from outboxkit import __version__
from outboxkit.commands import Handler, chaos, demo, jobs, migrate, relay, sink, verify
from outboxkit.failures import Named, explain
from runtime.process import configure_logging

TOOLS = {"status", "replay", "skip", "verify"}  # commands that answer and end: their output stays clean


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outboxkit", description="Exactly-once events: app DB -> Kafka -> warehouse"
    )
    parser.add_argument("--version", action="version", version=f"outboxkit {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (demo, migrate, relay, sink, jobs, chaos, verify):  # the order `--help` lists them in
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    # Alembic announces each of its plugins at INFO as it loads, which a command now does after
    # logging is set up (it imports its process when it runs): news to no operator.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    named = Named(
        " ".join(filter(None, (args.command, getattr(args, "action", None)))),
        extras=getattr(args, "extras", ""),
    )
    if {args.command, getattr(args, "action", None)} & TOOLS:
        # What librdkafka retries, and our own "unreachable, retrying", only come before the same
        # news in the tool's closing line (or are no news at all when it answers).
        logging.getLogger("outboxkit.kafka").setLevel(logging.ERROR)
    handler: Handler = args.handler
    try:
        return handler(args, named)
    except Exception as exc:
        failure = explain(exc, named)
        if failure is None:
            raise  # not foreseen: a bug, whose traceback helps
        print(f"outboxkit {named.command}: {failure.message}", file=sys.stderr)
        return failure.exit_code


if __name__ == "__main__":
    sys.exit(main())
