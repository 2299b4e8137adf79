"""`python -m bench <benchmark> [options]`: run one benchmark, print its Markdown table and write
its JSON results (default `bench/results/<benchmark>.json`, ignored by git).

A benchmark is a module with `TITLE` and `run(server_url, options) -> Report`; adding B2..B5 means
adding them to `BENCHMARKS`. The options are shared, so every benchmark is run the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from bench import b1
from bench.pg import Endpoints
from bench.report import BenchmarkError, Options, Report, markdown, write_json


class Benchmark(NamedTuple):
    """A subcommand: its one-line help, and how to run it against a PostgreSQL server URL."""

    title: str
    run: Callable[[str, Options], Report]


BENCHMARKS = {"b1": Benchmark(b1.TITLE, b1.run)}
RESULTS = Path(__file__).parent / "results"
MIN_REPS = 3  # the benchmark rules: fewer repetitions give no median worth quoting
FULL_SECONDS, QUICK_SECONDS = 5.0, 1.0
FULL_REPS = 5


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    options = _options(args)
    minimum = 1 if options.quick else MIN_REPS
    if options.reps < minimum or options.seconds <= 0:
        parser.error(
            f"give --reps of at least {minimum} and --seconds above 0 "
            f"(fewer than {MIN_REPS} repetitions give no median worth quoting; --quick is for smoke runs)"
        )
    try:
        report = BENCHMARKS[args.benchmark].run(Endpoints().pg_url, options)
    except BenchmarkError as exc:
        print(f"bench {args.benchmark}: {exc}", file=sys.stderr)
        return 1
    path = args.json or RESULTS / f"{args.benchmark}.json"
    write_json(path, report, options)
    print(markdown(report))
    print(f"\n{'quick run: figures not for quoting; ' if options.quick else ''}results in {path}")
    return 0


def _options(args: argparse.Namespace) -> Options:
    """--quick changes the defaults only: an explicit --seconds or --reps still wins."""
    quick: bool = args.quick
    return Options(
        seconds=args.seconds if args.seconds is not None else (QUICK_SECONDS if quick else FULL_SECONDS),
        reps=args.reps if args.reps is not None else (1 if quick else FULL_REPS),
        clients=args.clients,
        quick=quick,
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="1 repetition of 1 s: catches crashes only")
    common.add_argument("--seconds", type=float, help=f"per measurement (default {FULL_SECONDS:g})")
    common.add_argument("--reps", type=int, help=f"repetitions of each variant (default {FULL_REPS})")
    common.add_argument("--clients", type=_clients, default=(1, 8), help="comma-separated (default 1,8)")
    common.add_argument("--json", type=Path, help="results file (default bench/results/<benchmark>.json)")
    parser = argparse.ArgumentParser(prog="python -m bench", description="outboxkit benchmarks")
    commands = parser.add_subparsers(dest="benchmark", required=True)
    for name, benchmark in BENCHMARKS.items():
        commands.add_parser(name, parents=[common], help=benchmark.title, description=benchmark.title)
    return parser


def _clients(text: str) -> tuple[int, ...]:
    try:
        clients = tuple(int(part) for part in text.split(","))
    except ValueError:
        clients = ()
    if not clients or min(clients) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give client counts like 1,8")
    return clients


if __name__ == "__main__":
    sys.exit(main())
