"""`outboxkit sink run|status|replay|skip|query|snapshots`: write Kafka topics to the warehouse,
report, rewind the stored offsets, accept a gap, or read a table as it was (time travel)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from outboxkit.commands import Commands
from outboxkit.commands.processes import run_and_status
from outboxkit.failures import Named
from runtime.process import ExitCode, StopFlag


def register(commands: Commands) -> None:
    actions = run_and_status(
        commands,
        "sink",
        "write Kafka topics to the warehouse",
        run=_run,
        status=_status,
        status_help="stored offset, lag and stop reason per partition, tables, dead letters",
        extras="sink,duckdb",  # DuckDB is the default warehouse (a PostgreSQL one needs only [sink])
    )
    _register_replay(actions)
    _register_skip(actions)
    _register_query(actions)


def _register_query(actions: Commands) -> None:
    query = actions.add_parser(
        "query", help="a table as it was at a time or a lakehouse snapshot, one JSON object per row"
    )
    query.add_argument("table")
    when = query.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--valid-at",
        type=datetime.fromisoformat,
        help="ISO time with its zone: a history table's version of each key valid then (by event time)",
    )
    when.add_argument("--snapshot", type=int, help="DuckLake: the table at this snapshot (`sink snapshots`)")
    when.add_argument(
        "--snapshot-at",
        type=datetime.fromisoformat,
        help="DuckLake: the table at its last snapshot by this time",
    )
    query.set_defaults(handler=_query)
    listing = actions.add_parser("snapshots", help="a DuckLake warehouse's snapshots: id and commit time")
    listing.set_defaults(handler=_snapshots)


def _register_replay(actions: Commands) -> None:
    rewind = actions.add_parser(
        "replay", help="rewind the stored offsets so a sink reprocesses a range (idempotently)"
    )
    start = rewind.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-offset", type=int, help="offset to start again from (every partition)")
    start.add_argument(
        "--from-timestamp",
        type=datetime.fromisoformat,
        help="ISO time, e.g. 2026-11-26T08:00:00+00:00: the first record at or after it",
    )
    rewind.add_argument("--topic", action="append", help="only this topic (repeatable; default: all)")
    rewind.add_argument("--partition", type=int, help="only this partition")
    rewind.set_defaults(handler=_replay)


def _register_skip(actions: Commands) -> None:
    forward = actions.add_parser(
        "skip",
        help="accept a gap: move a stopped partition's stored offset forward (gives up what is before)",
    )
    forward.add_argument("--topic", required=True)
    forward.add_argument("--partition", type=int, required=True)
    forward.add_argument("--to-offset", type=int, required=True, help="the first offset to read again")
    forward.set_defaults(handler=_skip)


def _run(args: argparse.Namespace, named: Named) -> int:
    from runtime.telemetry import traced
    from sink import SinkSettings, sink_from_settings
    from sink.names import SERVICE
    from sink.run import tune_gc

    settings = named.load(SinkSettings)
    with traced(SERVICE):
        sink = sink_from_settings(settings)
        tune_gc()
        stats = sink.run(StopFlag(), drain=args.drain)
    print(
        f"outboxkit sink: {stats.applied} applied, {stats.skipped} skipped as duplicates, "
        f"{stats.dead_letters} dead letter(s) in {stats.batches} batch(es)",
        file=sys.stderr,
    )
    return ExitCode.OK


def _status(args: argparse.Namespace, named: Named) -> int:
    from sink import SinkSettings
    from sink.status import sink_status

    report = sink_status(named.load(SinkSettings))
    print(report.to_json() if args.json else report.render())
    return ExitCode.OK


def _replay(args: argparse.Namespace, named: Named) -> int:
    from sink import SinkSettings
    from sink.replay import replay

    moved = replay(
        named.load(SinkSettings),
        from_offset=args.from_offset,
        from_timestamp=args.from_timestamp,
        topics=args.topic,
        partition=args.partition,
    )
    for (topic, partition), offset in sorted(moved.items()):
        print(f"{topic}[{partition}]: stored offset rewound to {offset}")
    print(f"{len(moved)} partition(s) rewound; a running sink re-reads them at its next batch")
    return ExitCode.OK


def _skip(args: argparse.Namespace, named: Named) -> int:
    from sink import SinkSettings
    from sink.replay import skip

    now = skip(named.load(SinkSettings), args.topic, args.partition, args.to_offset)
    stored = "none (nothing to skip)" if now is None else now
    print(f"{args.topic}[{args.partition}]: stored offset {stored}; restart the sink to read on from it")
    return ExitCode.OK


def _query(args: argparse.Namespace, named: Named) -> int:
    import json

    from sink import SinkSettings
    from sink.as_of import rows_as_of
    from sink.run import warehouse

    with warehouse(named.load(SinkSettings)) as engine, engine.connect() as conn:
        names, rows = rows_as_of(
            conn, args.table, valid_at=args.valid_at, snapshot=args.snapshot, snapshot_at=args.snapshot_at
        )
    for row in rows:
        print(json.dumps(dict(zip(names, row, strict=True)), default=str))
    return ExitCode.OK


def _snapshots(args: argparse.Namespace, named: Named) -> int:
    from sink import SinkSettings
    from sink.as_of import snapshots
    from sink.run import warehouse

    with warehouse(named.load(SinkSettings)) as engine, engine.connect() as conn:
        for snapshot in snapshots(conn):
            print(f"{snapshot.id}\t{snapshot.committed_at.isoformat()}")
    return ExitCode.OK
