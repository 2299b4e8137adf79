"""`python -m bench plot`: PNG plots of the latest results files — throughput bars and latency
percentiles against the offered rate.

Drawn from the JSON files alone (`bench/results/*.json`), so a plot always shows a run that was
recorded with its host facts, never figures typed in by hand. Bars are medians; the whiskers span
the repetitions (min to max).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only: no display on the machines this runs on
import matplotlib.pyplot as plt

# Per benchmark: the variants drawn side by side, in order, and what tells its groups apart.
VARIANTS = ("baseline", "outbox", "naive", "ceiling", "outboxkit")
GROUPS = ("warehouse", "conflicts", "clients", "capture", "batch_size", "jobs")


def plot(results: Path, out: Path) -> list[Path]:
    """Draw every plot the results in `results` allow into `out`; return the files written."""
    documents = {
        key: document
        for path in sorted(results.glob("*.json"))
        for key, document in _by_benchmark(path.stem, json.loads(path.read_text())).items()
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    bars = {name: doc for name, doc in documents.items() if _variants(doc["results"][0])}
    if bars:
        written.append(_throughput(bars, out / "throughput.png"))
    latency = {name: doc for name, doc in documents.items() if "poll_interval" in doc["results"][0]}
    if latency:
        written.append(_latency(latency, out / "latency.png"))
    split = {name: doc for name, doc in documents.items() if "writers_ms_per_1k_median" in doc["results"][0]}
    if split:
        written.append(_cpu(split, out / "cpu.png"))
    return written


def _by_benchmark(name: str, document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A results file as one document per benchmark it measured: B6's file holds two (transactions
    and jobs drained), each with variants of its own, so each gets a panel of its own."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in document["results"]:
        groups.setdefault(str(result.get("benchmark", name)), []).append(result)
    if len(groups) == 1:
        return {name: document}
    return {f"{name}/{n}": {**document, "results": results} for n, results in enumerate(groups.values(), 1)}


def _cpu(documents: dict[str, dict[str, Any]], path: Path) -> Path:
    """B5: CPU per 1,000 events by component, one bar per offered rate."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    results = [result for document in documents.values() for result in document["results"]]
    components = [
        key.removesuffix("_ms_per_1k_median") for key in results[0] if key.endswith("_ms_per_1k_median")
    ]
    for n, result in enumerate(results):
        bottom = 0.0
        for m, component in enumerate(components):
            value = result[f"{component}_ms_per_1k_median"] or 0.0
            axis.bar(n, value, 0.6, bottom=bottom, color=f"C{m}", label=component if n == 0 else None)
            bottom += value
    axis.set_xticks(range(len(results)), [f"{result['offered']:,.0f} events/s offered" for result in results])
    axis.set_ylabel("CPU ms per 1,000 events")
    axis.set_title("B5 whole pipeline: where the CPU goes")
    axis.legend(fontsize="small")
    return _save(figure, documents, path)


def _save(figure: Any, documents: dict[str, dict[str, Any]], path: Path) -> Path:
    """Title the figure with the machine of its first results file, and write it."""
    figure.suptitle(_machine(next(iter(documents.values()))))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _variants(result: dict[str, Any]) -> list[str]:
    return [name for name in VARIANTS if isinstance(result.get(name), list)]


def _throughput(documents: dict[str, dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(1, len(documents), figsize=(5.5 * len(documents), 4.5), squeeze=False)
    for axis, (name, document) in zip(axes[0], documents.items(), strict=True):
        results = document["results"]
        variants = _variants(results[0])
        width = 0.8 / len(variants)
        for n, variant in enumerate(variants):
            values = [sorted(result[variant]) for result in results]
            medians = [result[f"{variant}_median"] for result in results]
            low = [median - spread[0] for median, spread in zip(medians, values, strict=True)]
            high = [spread[-1] - median for median, spread in zip(medians, values, strict=True)]
            positions = [group + (n - (len(variants) - 1) / 2) * width for group in range(len(results))]
            axis.bar(positions, medians, width, yerr=[low, high], capsize=3, label=variant)
        axis.set_xticks(range(len(results)), [_group(result) for result in results], fontsize="small")
        spread = [value for result in results for variant in variants for value in result[variant]]
        if max(spread) > 20 * min(spread):  # naive and ceiling differ by orders of magnitude
            axis.set_yscale("log")
        axis.set_ylabel(results[0]["unit"])
        axis.set_title(f"{results[0]['benchmark']} ({name})")
        axis.legend(fontsize="small")
    return _save(figure, documents, path)


def _latency(documents: dict[str, dict[str, Any]], path: Path) -> Path:
    """B3: per variant, p50 (dotted) and p99 (solid) of commit -> visible against the offered rate."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    variants: dict[str, list[dict[str, Any]]] = {}
    for document in documents.values():
        for result in document["results"]:
            capture = "wal, " if result.get("capture") == "wal" else ""  # files before wal: polling
            label = f"{capture}poll {result['poll_interval']} s" + (" + wake-up" if result["wakeup"] else "")
            variants.setdefault(label, []).append(result)
    for n, (label, results) in enumerate(variants.items()):
        runs = [run for result in results for run in result["runs"]]
        offered = sorted({run["offered"] for run in runs})
        for style, percentile in ((":", "p50"), ("-", "p99")):
            values = [_median_at(runs, rate, percentile) for rate in offered]
            axis.plot(offered, values, style, color=f"C{n}", marker="o", label=f"{label} {percentile}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("offered events/s (open loop)")
    axis.set_ylabel("commit -> visible to read_committed, ms")
    axis.set_title("B3 live latency")
    axis.legend(fontsize="x-small")
    return _save(figure, documents, path)


def _median_at(runs: list[dict[str, Any]], rate: float, percentile: str) -> float:
    values = sorted(run[f"commit_{percentile}"] for run in runs if run["offered"] == rate)
    return float(values[len(values) // 2])


def _group(result: dict[str, Any]) -> str:
    return "\n".join(_label(key, result[key]) for key in GROUPS if key in result)


def _label(key: str, value: object) -> str:
    if key == "conflicts":
        return f"{value:.0f} % conflicts"
    return str(value) if key == "warehouse" else f"{key.replace('_', ' ')} {value}"


def _machine(document: dict[str, Any]) -> str:
    host = document["host"]
    fsync = host.get("fdatasync_per_s", "?")
    return f"{host.get('cores')} cores, fdatasync {fsync}/s, {document['finished_at']}"
