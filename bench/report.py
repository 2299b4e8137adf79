"""What every benchmark hands back: repeated measurements of a baseline and of the same work with
the outbox, summarised as medians, their spread and the outbox/baseline ratio.

B1 is one rate per variant, so `Comparison` and its table serve it as they are. B2 (three variants
and a CPU figure) and B3 (latency percentiles) bring their own `Result` and `Table`, and `Goal`s:
the run prints whether each target of the issue was met, so a figure is never quoted without it.

The reference machines have 2 cores shared with PostgreSQL, so we quote ratios, not absolute
rates; the rates stay in the JSON file, with the host facts, to spot a run that went wrong.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Protocol

import sqlalchemy


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
    rate: float | None = None  # B3: offered events per second
    poll_intervals: tuple[float, ...] | None = None  # B3: relay poll intervals, the first the baseline
    wakeup: bool = False  # B3: also measure the relay woken by the app's NOTIFY


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
    tables = report.tables or [_comparison_table([r for r in report.results if isinstance(r, Comparison)])]
    parts = [table.markdown() for table in tables]
    if report.goals:
        parts.append(_goals_table(report.goals).markdown())
    if report.notes:
        parts.append("\n".join(report.notes))
    return "\n\n".join(parts)


def _comparison_table(comparisons: Sequence[Comparison]) -> Table:
    """B1's shape: one row per benchmark and client count."""
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
    facts: dict[str, object] = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "postgresql": report.server,
    }
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
