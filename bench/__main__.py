"""`python -m bench <benchmark> [options]`: run one benchmark, print its Markdown table and write
its JSON results (default `bench/results/<benchmark>.json`, ignored by git); `python -m bench plot`
draws the results files as PNGs.

A benchmark is a module with `TITLE` and `run(endpoints, options) -> Report` (B1 takes only the
PostgreSQL URL); adding one means adding it to `BENCHMARKS`. The options are shared, so every
benchmark is run the same way; each has its own default length (B2 and B4 drain a backlog however
long that takes, B3 offers load for 10 s). The load average before and after goes into the output:
the reference machines are shared, and a figure taken under foreign load should be read as such.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar, cast

from bench import b1, b2, b3, b4, b5, b6
from bench.host import describe, host_facts
from bench.pg import Endpoints
from bench.report import CAPTURES, BenchmarkError, Options, Report, markdown, run_facts, write_json
from relay.capture import CaptureMode


class Defaults(NamedTuple):
    """--seconds and --reps when not given."""

    seconds: float
    reps: int


class Benchmark(NamedTuple):
    """A subcommand: its one-line help, how to run it against the services, its default lengths."""

    title: str
    run: Callable[[Endpoints, Options], Report]
    full: Defaults
    quick: Defaults


MIN_REPS = 3  # the benchmark rules: fewer repetitions give no median worth quoting
QUICK = Defaults(seconds=1.0, reps=1)
BENCHMARKS = {
    "b1": Benchmark(
        b1.TITLE, lambda endpoints, options: b1.run(endpoints.pg_url, options), Defaults(5.0, 5), QUICK
    ),
    "b2": Benchmark(b2.TITLE, b2.run, Defaults(5.0, MIN_REPS), QUICK),  # drains: --seconds unused
    "b3": Benchmark(b3.TITLE, b3.run, Defaults(10.0, MIN_REPS), Defaults(2.0, 1)),
    "b4": Benchmark(b4.TITLE, b4.run, Defaults(5.0, MIN_REPS), QUICK),  # drains: --seconds unused
    "b5": Benchmark(b5.TITLE, b5.run, Defaults(10.0, MIN_REPS), Defaults(2.0, 1)),
    "b6": Benchmark(b6.TITLE, b6.run, Defaults(5.0, MIN_REPS), QUICK),  # part 2 drains: --seconds unused
}
RESULTS = Path(__file__).parent / "results"
N = TypeVar("N", int, float)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.benchmark == "plot":
        from bench.plots import plot  # noqa: PLC0415 - matplotlib loads only for plots

        for path in plot(args.results, args.out):
            print(f"wrote {path}")
        return 0
    benchmark = BENCHMARKS[args.benchmark]
    options = _options(args, benchmark)
    minimum = 1 if options.quick else MIN_REPS
    if options.reps < minimum or options.seconds <= 0:
        parser.error(
            f"give --reps of at least {minimum} and --seconds above 0 "
            f"(fewer than {MIN_REPS} repetitions give no median worth quoting; --quick is for smoke runs)"
        )
    before = run_facts()
    try:
        report = benchmark.run(Endpoints(), options)
    except BenchmarkError as exc:
        print(f"bench {args.benchmark}: {exc}", file=sys.stderr)
        return 1
    path = args.json or RESULTS / f"{args.benchmark}.json"
    write_json(path, report, options, before=before)
    print(markdown(report))
    print(_conditions(before, run_facts()))
    print(f"{'quick run: figures not for quoting; ' if options.quick else ''}results in {path}")
    return 0


def _conditions(before: dict[str, object], after: dict[str, object]) -> str:
    """The load average and the code at start and end: a figure belongs to both."""
    lines = [f"\n{describe(host_facts())}"]
    lines.append(f"load average (1, 5, 15 min): before {_load(before)}, after {_load(after)}")
    lines.append(f"code: {_code(before['code'])}")
    if after["code"] != before["code"]:
        lines.append(f"code CHANGED during the run, now: {_code(after['code'])}")
    return "\n".join(lines)


def _load(facts: dict[str, object]) -> str:
    averages = facts["load_average"]
    return ", ".join(f"{a:.2f}" for a in averages) if isinstance(averages, tuple) else str(averages)


def _code(facts: object) -> str:
    if not isinstance(facts, dict) or not facts:
        return "not a git checkout"
    changed = ", ".join(map(str, facts["uncommitted"]))
    return f"commit {str(facts['commit'])[:10]}, " + (
        f"uncommitted changes in {changed}" if changed else "clean"
    )


def _options(args: argparse.Namespace, benchmark: Benchmark) -> Options:
    """--quick changes the defaults only: an explicit --seconds or --reps still wins."""
    quick: bool = args.quick
    defaults = benchmark.quick if quick else benchmark.full
    return Options(
        seconds=args.seconds if args.seconds is not None else defaults.seconds,
        reps=args.reps if args.reps is not None else defaults.reps,
        clients=args.clients,
        quick=quick,
        rows=args.rows,
        naive_rows=args.naive_rows,
        batch_sizes=args.batch_sizes,
        conflicts=args.conflicts,
        rates=args.rates,
        poll_intervals=args.poll_intervals,
        wakeup=args.wakeup,
        captures=args.capture,
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="1 short repetition: catches crashes only")
    common.add_argument(
        "--seconds", type=float, help="per measurement (b1 5, b3 10, b6 5; b2 and b4 drain, b6's jobs too)"
    )
    common.add_argument("--reps", type=int, help="repetitions of each variant (b1 5, b2 to b4 3)")
    common.add_argument("--json", type=Path, help="results file (default bench/results/<benchmark>.json)")
    common.add_argument("--clients", type=_positive(int), default=(1, 8), help="b1: comma-separated (1,8)")
    common.add_argument(
        "--rows",
        type=int,
        help="b2: outbox backlog; b4: events on the topic (both 200000; quick 5000); b6: jobs (20000; "
        "quick 2000)",
    )
    common.add_argument(
        "--naive-rows", type=int, help="b2, b4: events the naive poller/consumer moves (5000; quick 500)"
    )
    common.add_argument(
        "--batch-sizes",
        type=_positive(int),
        help="comma-separated; b2: events per Kafka transaction (100,500,2000), b4: sink batch (5000)",
    )
    common.add_argument(
        "--conflicts",
        type=_shares,
        help="b4: comma-separated %% of events updating a key met before (0,50,90; quick 90)",
    )
    common.add_argument(
        "--rates",
        type=_positive(float),
        help="b3: offered events/s, comma-separated (100,1000,2000,5000; quick 200)",
    )
    common.add_argument(
        "--poll-intervals", type=_positive(float), help="b3: seconds, baseline first (0.5,0.02)"
    )
    common.add_argument("--wakeup", action="store_true", help="b3: also the relay woken by the app's NOTIFY")
    common.add_argument(
        "--capture",
        type=_captures,
        default=CAPTURES,
        help="b2, b3: how the relay reads the outbox, comma-separated, side by side (poll,wal)",
    )
    parser = argparse.ArgumentParser(prog="python -m bench", description="outboxkit benchmarks")
    commands = parser.add_subparsers(dest="benchmark", required=True)
    for name, benchmark in BENCHMARKS.items():
        commands.add_parser(name, parents=[common], help=benchmark.title, description=benchmark.title)
    plots = commands.add_parser("plot", help="PNG plots of the results files: throughput and latency")
    plots.add_argument(
        "--results", type=Path, default=RESULTS, help="where the JSON files are (bench/results)"
    )
    plots.add_argument("--out", type=Path, default=RESULTS, help="where the PNG files go (bench/results)")
    return parser


def _positive(kind: Callable[[str], N]) -> Callable[[str], tuple[N, ...]]:
    """A parser of comma-separated positive numbers, e.g. client counts 1,8 or intervals 0.5,0.02."""

    def parse(text: str) -> tuple[N, ...]:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers like 1,8")
        return values

    return parse


def _shares(text: str) -> tuple[float, ...]:
    """Comma-separated percentages from 0 to below 100, e.g. 0,50,90."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 <= value < 100 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give percentages from 0 to below 100 like 0,50,90")
    return values


def _captures(text: str) -> tuple[CaptureMode, ...]:
    """Comma-separated capture modes, e.g. poll,wal (each at most once, in the order given)."""
    values = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    if not values or not set(values) <= set(CAPTURES):
        raise argparse.ArgumentTypeError(f"{text!r}: give capture modes among {','.join(CAPTURES)}")
    return cast("tuple[CaptureMode, ...]", values)


if __name__ == "__main__":
    sys.exit(main())
