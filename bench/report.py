"""What every benchmark hands back: repeated measurements of a baseline and of the same work with
the outbox, summarised as medians, their spread and the outbox/baseline ratio.

B1 is one rate per variant, so `Comparison` and its table serve it as they are. B2 and B4 (three
variants and a CPU figure) bring their own `Result` and `Table`, built on `ThreeWay`, so both quote
and judge the three alike; B3 (latency percentiles) brings its own. Each brings `Goal`s: the run
prints whether each target of the issue was met, so a figure is never quoted without it.

The reference machines have 2 cores shared with PostgreSQL, so we quote ratios, not absolute
rates; the rates stay in the JSON file, with the host facts, to spot a run that went wrong.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import ClassVar, Protocol

from bench.host import host_facts
from relay.capture import CaptureMode

CAPTURES: tuple[CaptureMode, ...] = ("poll", "wal")  # polling first: the baseline wal is judged against


class BenchmarkError(Exception):
    """A run whose figures cannot be trusted: it must fail rather than print them."""


@dataclass(frozen=True)
class Options:
    """How long and how often to measure. `quick` runs catch crashes; their figures are not quoted.

    The fields after `quick` belong to one benchmark each; None means that benchmark's default
    (which depends on `quick`), so a test can pin one without knowing the others.
    """

    seconds: float
    reps: int
    clients: tuple[int, ...]
    quick: bool = False
    rows: int | None = None  # B2: outbox backlog to drain
    naive_rows: int | None = None  # B2: rows the naive relay drains of that backlog
    batch_sizes: tuple[int, ...] | None = None  # B2: events per Kafka transaction
    rates: tuple[float, ...] | None = None  # B3: offered events per second, one measurement each
    poll_intervals: tuple[float, ...] | None = None  # B3: relay poll intervals, the first the baseline
    wakeup: bool = False  # B3: also measure the relay woken by the app's NOTIFY
    conflicts: tuple[float, ...] | None = None  # B4: % of events updating a key met before
    captures: tuple[CaptureMode, ...] = CAPTURES  # B2, B3: how the relay reads the outbox, side by side


class Result(Protocol):
    """One line of a benchmark's results file."""

    def to_json(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class Comparison:
    """One benchmark at one client count: a rate per repetition, baseline and outbox."""

    benchmark: str
    clients: int
    unit: str
    baseline: tuple[float, ...]
    outbox: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """Outbox median over baseline median: 1.0 means the outbox costs nothing."""
        return median(self.outbox) / median(self.baseline)

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "baseline_median": median(self.baseline),
            "outbox_median": median(self.outbox),
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class Table:
    """A Markdown table as printed: header cells, one alignment letter per column (l/r), rows."""

    columns: tuple[str, ...]
    align: str
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in self.align) + "|"
        return "\n".join(
            ["| " + " | ".join(self.columns) + " |", rule] + ["| " + " | ".join(r) + " |" for r in self.rows]
        )


@dataclass(frozen=True)
class Goal:
    """A target the benchmark's issue sets, and whether this run met it (printed, never hidden)."""

    goal: str
    where: str
    measured: str
    met: bool


class ThreeWay:
    """A drain benchmark's comparison at one batch size (B2, B4): events/s per repetition of
    outboxkit, of the naive way it replaces and of the ceiling it cannot pass, and CPU seconds per
    1,000 events of each.

    A mixin rather than a dataclass base, so that each benchmark's dataclass keeps its own field
    order, which is its JSON's; its table puts its own leading cells before `cells()`.
    """

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "naive median",
        "ceiling median",
        "outboxkit median",
        "spread (min-max)",
        "outboxkit / naive",
        "outboxkit / ceiling",
        "CPU s per 1k events: naive, ceiling, outboxkit",
    )
    ALIGN: ClassVar[str] = "rrrlrrl"

    batch_size: int
    unit: str
    rows: int
    naive_rows: int
    outboxkit: tuple[float, ...]
    naive: tuple[float, ...]
    ceiling: tuple[float, ...]
    cpu_per_1k: dict[str, tuple[float, ...]]

    @property
    def vs_naive(self) -> float:
        return median(self.outboxkit) / median(self.naive)

    @property
    def vs_ceiling(self) -> float:
        return median(self.outboxkit) / median(self.ceiling)

    def summary(self) -> dict[str, float]:
        """The medians and ratios the results file carries beside the repetitions."""
        medians = {f"{v}_median": median(getattr(self, v)) for v in ("outboxkit", "naive", "ceiling")}
        cpu = {f"cpu_per_1k_{v}_median": median(xs) for v, xs in self.cpu_per_1k.items()}
        return {**medians, **cpu, "vs_naive": self.vs_naive, "vs_ceiling": self.vs_ceiling}

    def cells(self) -> tuple[str, ...]:
        """The row under `COLUMNS`; a naive median taken on part of the backlog is marked, for the
        note that says so."""
        mark = "\\*" if self.naive_rows < self.rows else ""
        return (
            f"{median(self.naive):,.0f} {self.unit}{mark}",
            f"{median(self.ceiling):,.0f} {self.unit}",
            f"{median(self.outboxkit):,.0f} {self.unit}",
            f"naive {spread(self.naive)}, ceiling {spread(self.ceiling)}, outboxkit {spread(self.outboxkit)}",
            f"{self.vs_naive:,.1f}",
            f"{self.vs_ceiling:.2f}",
            ", ".join(f"{median(self.cpu_per_1k[v]):.3f}" for v in ("naive", "ceiling", "outboxkit")),
        )

    def naive_whole(self) -> str:
        """How long the naive way would take for the whole backlog at its median rate: the note
        that marks a sampled naive figure says it, so nobody reads the sample as the whole."""
        seconds = self.rows / median(self.naive)
        return f"{seconds / 60:,.0f} min" if seconds >= 120 else f"{seconds:,.0f} s"


@dataclass(frozen=True)
class Targets:
    """The issue's three targets for a drain benchmark (B2, B4), and the batch size they are judged
    at first: the component's default, which is what users run."""

    rate: float
    vs_naive: float
    vs_ceiling: float
    default_batch_size: int

    def order(self, comparison: ThreeWay) -> tuple[bool, int]:
        """A sort key: the default batch size first, then the others from the smallest."""
        return comparison.batch_size != self.default_batch_size, comparison.batch_size

    def where(self, comparison: ThreeWay) -> str:
        default = " (default)" if comparison.batch_size == self.default_batch_size else ""
        return f"batch size {comparison.batch_size:,}{default}"

    def goals(self, comparison: ThreeWay, where: str) -> list[Goal]:
        """The three targets, met or not, for one comparison."""
        c, rate = comparison, median(comparison.outboxkit)
        return [
            Goal(f">= {self.rate:,.0f} events/s", where, f"{rate:,.0f} events/s", rate >= self.rate),
            Goal(f">= {self.vs_naive:g}x naive", where, f"{c.vs_naive:,.1f}x", c.vs_naive >= self.vs_naive),
            Goal(
                f">= {self.vs_ceiling:g}x ceiling",
                where,
                f"{c.vs_ceiling:.2f}x",
                c.vs_ceiling >= self.vs_ceiling,
            ),
        ]


@dataclass(frozen=True)
class Report:
    """A benchmark run: its results, facts about the services, what to print.

    `tables` default to B1's comparison table of `results`; `goals` and `notes` print below them.
    """

    results: Sequence[Result]
    server: dict[str, str]
    kafka: dict[str, str] | None = None
    tables: Sequence[Table] = ()
    goals: Sequence[Goal] = ()
    notes: Sequence[str] = ()


def markdown(report: Report) -> str:
    """The tables, then the goals (met or not), then the notes that qualify a figure."""
    tables = report.tables or [comparison_table([r for r in report.results if isinstance(r, Comparison)])]
    parts = [table.markdown() for table in tables]
    if report.goals:
        parts.append(_goals_table(report.goals).markdown())
    if report.notes:
        parts.append("\n".join(report.notes))
    return "\n\n".join(parts)


def comparison_table(comparisons: Sequence[Comparison]) -> Table:
    """B1's shape (B6's first part too): one row per benchmark and client count."""
    return Table(
        ("benchmark", "clients", "baseline median", "outbox median", "spread (min-max)", "ratio"),
        "lrrrlr",
        tuple(
            (
                c.benchmark,
                str(c.clients),
                f"{median(c.baseline):,.0f} {c.unit}",
                f"{median(c.outbox):,.0f} {c.unit}",
                f"baseline {spread(c.baseline)}, outbox {spread(c.outbox)}",
                f"{c.ratio:.2f}",
            )
            for c in comparisons
        ),
    )


def _goals_table(goals: Sequence[Goal]) -> Table:
    return Table(
        ("goal", "where", "measured", "met"),
        "lllr",
        tuple((g.goal, g.where, g.measured, "**met**" if g.met else "**not met**") for g in goals),
    )


def spread(values: Sequence[float], digits: int = 0) -> str:
    """min-max of the repetitions, as the tables print it."""
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.99 for p99): a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def write_json(path: Path, report: Report, options: Options, *, before: dict[str, object]) -> None:
    """Every repetition's figures, the options and the host facts: enough to compare two runs later.

    `before`: `run_facts()` taken when the run started, kept beside those at its end.
    """
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": asdict(options),
        "host": _host_facts(report) | {"before": before, "after": run_facts()},
        "results": [result.to_json() for result in report.results],
        "goals": [asdict(goal) for goal in report.goals],
        "notes": list(report.notes),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _host_facts(report: Report) -> dict[str, object]:
    facts: dict[str, object] = host_facts() | {"postgresql": report.server}
    if report.kafka is not None:
        facts["kafka"] = report.kafka
    return facts


def run_facts() -> dict[str, object]:
    """What may change while a benchmark runs: the machine's load (it is shared) and the code."""
    return {"load_average": os.getloadavg(), "code": code_facts()}


def code_facts() -> dict[str, object]:
    """The commit measured, and which library files differed from it: the code under test may be
    changing while a benchmark runs, and a figure belongs to the code it was taken on."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        changed = _git(root, "status", "--porcelain", "--", "outbox", "relay", "sink").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "uncommitted": [line[3:] for line in changed]}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout  # noqa: S603, S607
