"""What every benchmark hands back: repeated measurements of a baseline and of the same work with
the outbox, summarised as medians, their spread and the outbox/baseline ratio.

The reference machines have 2 cores shared with PostgreSQL, so we quote ratios, not absolute
rates; the rates stay in the JSON file, with the host facts, to spot a run that went wrong.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

import sqlalchemy


class BenchmarkError(Exception):
    """A run whose figures cannot be trusted: it must fail rather than print them."""


@dataclass(frozen=True)
class Options:
    """How long and how often to measure. `quick` runs catch crashes; their figures are not quoted."""

    seconds: float
    reps: int
    clients: tuple[int, ...]
    quick: bool = False


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


@dataclass(frozen=True)
class Report:
    """A benchmark run: its comparisons and the facts about the server it ran against."""

    comparisons: list[Comparison]
    server: dict[str, str]


def markdown(report: Report) -> str:
    """The comparisons as a Markdown table, one row per benchmark and client count."""
    lines = [
        "| benchmark | clients | baseline median | outbox median | spread (min-max) | ratio |",
        "|---|---:|---:|---:|---|---:|",
    ]
    lines += [
        f"| {c.benchmark} | {c.clients} | {median(c.baseline):,.0f} {c.unit} | "
        f"{median(c.outbox):,.0f} {c.unit} | {_spread(c)} | {c.ratio:.2f} |"
        for c in report.comparisons
    ]
    return "\n".join(lines)


def _spread(comparison: Comparison) -> str:
    baseline, outbox = comparison.baseline, comparison.outbox
    return f"baseline {min(baseline):,.0f}-{max(baseline):,.0f}, outbox {min(outbox):,.0f}-{max(outbox):,.0f}"


def write_json(path: Path, report: Report, options: Options) -> None:
    """Every repetition's rate, the options and the host facts: enough to compare two runs later."""
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": asdict(options),
        "host": _host_facts(report.server),
        "results": [
            {
                **asdict(c),
                "baseline_median": median(c.baseline),
                "outbox_median": median(c.outbox),
                "ratio": c.ratio,
            }
            for c in report.comparisons
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _host_facts(server: dict[str, str]) -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "postgresql": server,
    }
