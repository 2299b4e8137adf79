"""`outboxkit jobs dispatch|status|replay`: hand the jobs topic to the Dramatiq broker, report how far
it is, or send the jobs Dramatiq gave up on back to their queue."""

from __future__ import annotations

import argparse
import sys

from outboxkit.commands import Commands
from outboxkit.failures import Named
from runtime.process import ExitCode, StopFlag


def register(commands: Commands) -> None:
    command = commands.add_parser("jobs", help="deliver the outbox's Dramatiq jobs to their broker")
    command.set_defaults(extras="relay,dramatiq")  # the dispatcher's Kafka consumer comes with [relay]
    actions = command.add_subparsers(dest="action", required=True)
    dispatch = actions.add_parser(
        "dispatch", help="deliver the jobs topic to the broker (settings from OUTBOXKIT_JOBS_* and .env)"
    )
    dispatch.add_argument("--drain", action="store_true", help="exit once every partition is read to its end")
    dispatch.set_defaults(handler=_dispatch)
    status = actions.add_parser(
        "status", help="the dispatchers' lag per partition, the broker's queue depths"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--queue",
        action="append",
        help="a queue whose depth and dead letters to show (repeatable; default: OUTBOXKIT_JOBS_QUEUES)",
    )
    status.set_defaults(handler=_status)
    replay = actions.add_parser(
        "replay", help="move a queue's dead letters back onto it, retries reset (after fixing their cause)"
    )
    replay.add_argument("--queue", required=True, help="the queue whose dead-letter queue to replay")
    replay.add_argument("--limit", type=int, help="replay at most this many, oldest first (default: all)")
    replay.set_defaults(handler=_replay)


def _dispatch(args: argparse.Namespace, named: Named) -> int:
    from jobs.dispatch import dispatcher_from_settings
    from jobs.names import SERVICE
    from jobs.settings import JobsSettings
    from runtime.telemetry import traced

    settings = named.load(JobsSettings)
    with traced(SERVICE):
        stats = dispatcher_from_settings(settings).run(StopFlag(), drain=args.drain)
    print(
        f"outboxkit jobs: {stats.dispatched} job(s) dispatched in {stats.batches} batch(es), "
        f"{stats.delivery_failures} delivery failure(s) retried",
        file=sys.stderr,
    )
    return ExitCode.OK


def _status(args: argparse.Namespace, named: Named) -> int:
    from jobs.settings import JobsSettings
    from jobs.status import jobs_status

    settings = named.load(JobsSettings)
    report = jobs_status(settings, args.queue or settings.queues)
    print(report.to_json() if args.json else report.render())
    return ExitCode.OK


def _replay(args: argparse.Namespace, named: Named) -> int:
    from jobs.dead_letters import dead_letter_queues
    from jobs.delivery import broker_from_url
    from jobs.settings import JobsSettings

    broker = broker_from_url(named.load(JobsSettings).broker_url.get_secret_value(), middleware=[])
    try:
        replayed = dead_letter_queues(broker).replay(args.queue, args.limit)
    finally:
        broker.close()
    print(
        f"outboxkit jobs: {replayed} dead letter(s) of queue {args.queue} back on the queue", file=sys.stderr
    )
    return ExitCode.OK
