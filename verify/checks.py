"""The checks: pure functions from what was seen to what is wrong.

Events carry a per-aggregate version, dense from 1 in commit order (the outbox hands it out under
a row lock), so the checker needs no ledger of its own to tell:

* **lost** — a version of an aggregate that was committed (up to `outbox_versions`, or the
  highest seen) is in none of Kafka, the outbox (not yet published) and the relay's dead letters; or an
  event in Kafka is missing from the warehouse's event log;
* **duplicated** — an event id more than once in Kafka, or in the warehouse's event log;
* **reordered** — an aggregate's versions do not rise along its partition, or it is spread over
  several partitions (no order between them);
* **phantom** — an event that was never committed: a version above the committed one, two event
  ids claiming one version (one was rolled back), a warehouse row for an event Kafka does not
  hold committed (an aborted transaction applied);
* **stale** — the warehouse's current-state row for a key is not its newest event (or a deleted
  key still has a live row); given the app's table it mirrors, a row whose columns differ (a row
  missing from either side is lost or phantom).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from verify.kafka import Seen

Aggregate = tuple[str, str]
KINDS = ("lost", "duplicated", "reordered", "phantom", "stale")
EXAMPLES = 5


@dataclass
class Findings:
    """Counts per kind of violation, with the first few examples; `ok` when all are zero."""

    events: int = 0
    pending: int = 0  # committed, in the outbox and not in Kafka yet (not a violation)
    dead_letters: int = 0  # refused by Kafka for good, with a reason (not a violation)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def add(self, kind: str, example: str, count: int = 1) -> None:
        self.counts[kind] += count
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def render(self) -> str:
        verdict = "OK: exactly once, in per-key order" if self.ok else "VIOLATIONS FOUND"
        lines = [
            f"{verdict} — {self.events} event(s) checked, {self.pending} pending, "
            f"{self.dead_letters} dead letter(s)",
            "  " + ", ".join(f"{kind} {count}" for kind, count in self.counts.items()),
        ]
        for kind in KINDS:
            lines += [f"  {kind}: {example}" for example in self.examples[kind]]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "events": self.events,
                "pending": self.pending,
                "dead_letters": self.dead_letters,
                "counts": self.counts,
                "examples": self.examples,
            },
            indent=2,
        )


def check_kafka(
    findings: Findings,
    seen: Iterable[Seen],
    committed: Mapping[Aggregate, int] | None = None,
    parked: Mapping[Aggregate, set[int]] | None = None,
    aggregate_types: Iterable[str] | None = None,
) -> None:
    """Kafka against itself and, given `committed` (highest version per aggregate) and `parked`
    (versions still in the outbox or among its dead letters), against the source: for the `aggregate_types`
    the topics carry (by default, those found in them)."""
    by_id: Counter[str] = Counter()
    by_aggregate: dict[Aggregate, list[Seen]] = defaultdict(list)
    for record in seen:
        if record.event_id is None or record.aggregate is None or record.version is None:
            findings.add(
                "phantom", f"{record.topic}[{record.partition}]@{record.offset} is not an outboxkit event"
            )
            continue
        by_id[record.event_id] += 1
        if by_id[record.event_id] == 1:
            by_aggregate[record.aggregate].append(record)
    for event_id, count in by_id.items():
        if count > 1:
            findings.add("duplicated", f"event {event_id} is in Kafka {count} times", count - 1)
    findings.events = len(by_id)
    for aggregate, records in by_aggregate.items():
        _check_order(findings, aggregate, records)
    types = set(aggregate_types) if aggregate_types is not None else {kind for kind, _ in by_aggregate}
    _check_versions(findings, by_aggregate, types, committed, parked or {})


def _check_order(findings: Findings, aggregate: Aggregate, records: list[Seen]) -> None:
    partitions = sorted({(r.topic, r.partition) for r in records})
    if len(partitions) > 1:
        findings.add("reordered", f"{_name(aggregate)} is spread over {partitions}: no order between them")
    records.sort(key=lambda r: (r.topic, r.partition, r.offset))
    for before, after in itertools.pairwise(records):
        previous, version = before.version or 0, after.version or 0  # never None: filtered above
        if version == previous:
            findings.add("phantom", f"{_name(aggregate)} v{version} is claimed by two events")
        elif version < previous:
            findings.add("reordered", f"{_name(aggregate)} v{version} comes after v{previous}")


def _check_versions(
    findings: Findings,
    by_aggregate: Mapping[Aggregate, list[Seen]],
    types: set[str],
    committed: Mapping[Aggregate, int] | None,
    parked: Mapping[Aggregate, set[int]],
) -> None:
    aggregates = set(by_aggregate) | {a for a in committed or {} if a[0] in types}
    for aggregate in sorted(aggregates):
        present = {r.version for r in by_aggregate.get(aggregate, ()) if r.version is not None}
        top = committed.get(aggregate, 0) if committed is not None else max(present, default=0)
        missing = set(range(1, top + 1)) - present - parked.get(aggregate, set())
        if missing:
            findings.add("lost", f"{_name(aggregate)} misses v{_ranges(missing)}", len(missing))
        above = {v for v in present if v > top}
        if above:
            findings.add(
                "phantom", f"{_name(aggregate)} v{_ranges(above)} above the committed v{top}", len(above)
            )


def check_log(findings: Findings, seen: Iterable[Seen], log_ids: Iterable[str]) -> None:
    """The warehouse's event log (a sink table in append mode) against Kafka."""
    in_kafka = {r.event_id for r in seen if r.event_id is not None}
    logged = Counter(log_ids)
    for event_id, count in logged.items():
        if count > 1:
            findings.add("duplicated", f"event {event_id} is in the warehouse log {count} times", count - 1)
    for event_id in sorted(logged.keys() - in_kafka):
        findings.add("phantom", f"event {event_id} is in the warehouse but not committed in Kafka")
    missing = sorted(in_kafka - logged.keys())
    if missing:
        findings.add(
            "lost", f"{len(missing)} event(s) not in the warehouse log, e.g. {missing[0]}", len(missing)
        )


def check_state(
    findings: Findings,
    seen: Iterable[Seen],
    rows: Mapping[str, tuple[int | None, bool]],
    delete_types: Iterable[str],
) -> None:
    """The warehouse's current state (a sink table in upsert mode): per key, the newest event."""
    patterns = tuple(delete_types)
    newest = _newest(seen)
    for key, record in sorted(newest.items()):
        deleted = any(fnmatchcase(record.event_type or "", p) for p in patterns)
        version, flagged = rows.get(key, (None, False))
        if deleted and key in rows and not flagged:
            findings.add("stale", f"key {key} was deleted (v{record.version}) but its row is live")
        elif not deleted and version != record.version:
            findings.add("stale", f"key {key} holds v{version}, its newest event is v{record.version}")
    for key in sorted(rows.keys() - newest.keys()):
        findings.add("phantom", f"key {key} has a warehouse row but no committed event")


def _newest(seen: Iterable[Seen]) -> dict[str, Seen]:
    """Per key, the committed event with the highest version (events without one say nothing)."""
    newest: dict[str, Seen] = {}
    for record in seen:
        if record.key is None or record.version is None:
            continue
        held = newest.get(record.key)
        if held is None or (held.version is not None and record.version > held.version):
            newest[record.key] = record
    return newest


def check_source(
    findings: Findings,
    table: str,
    source: Mapping[str, tuple[object, ...]],
    live: Mapping[str, tuple[object, ...]],
) -> None:
    """The app's table against the warehouse's live current-state rows, column by column."""
    for key in sorted(source.keys() - live.keys()):
        findings.add("lost", f"{table} row {key} is not in the warehouse")
    for key in sorted(live.keys() - source.keys()):
        findings.add("phantom", f"the warehouse holds {table} row {key}, which the app does not")
    for key in sorted(key for key in source.keys() & live.keys() if source[key] != live[key]):
        findings.add("stale", f"{table} row {key} is {live[key]} in the warehouse, {source[key]} in the app")


def _name(aggregate: Aggregate) -> str:
    return f"{aggregate[0]} {aggregate[1]}"


def _ranges(versions: set[int]) -> str:
    ordered = sorted(versions)
    return ",".join(str(v) for v in ordered[:10]) + ("..." if len(ordered) > 10 else "")
