"""`outboxkit sink replay`: reprocess a range of a topic, idempotently.

Replay only rewinds the offsets stored in the warehouse (never forward: that would skip events).
A running sink notices at its next batch — its offset compare-and-set fails — and re-reads from
there; a stopped one starts there. Versions, event ids and delete markers make the re-applied
events change nothing that is already right, and apply what was missing (e.g. after a mapping
fix, or after dead letters were repaired upstream).
"""

from __future__ import annotations

from datetime import datetime

from sink import offsets
from sink.errors import SinkConfigError
from sink.partitions import inspector, offsets_at, partitions
from sink.records import Where
from sink.run import warehouse
from sink.settings import SinkSettings


def replay(
    settings: SinkSettings,
    *,
    from_offset: int | None = None,
    from_timestamp: datetime | None = None,
    topics: list[str] | None = None,
    partition: int | None = None,
) -> dict[Where, int]:
    """Rewind the group's stored offsets; returns the partitions moved and where they now stand."""
    if (from_offset is None) == (from_timestamp is None):
        raise ValueError("give exactly one of from_offset and from_timestamp")
    unknown = set(topics or ()) - set(settings.topics)
    if unknown:
        raise SinkConfigError(f"topic(s) {', '.join(sorted(unknown))} {_not_in(settings)}")
    with inspector(settings.kafka) as consumer:
        wheres = [w for w in partitions(consumer, topics or settings.topics) if partition in (None, w[1])]
        if from_timestamp is not None:
            targets = offsets_at(consumer, wheres, from_timestamp)
        else:
            targets = dict.fromkeys(wheres, from_offset or 0)
    with warehouse(settings) as engine, engine.begin() as conn:
        return offsets.rewind(conn, settings.group_id, targets)


def skip(settings: SinkSettings, topic: str, partition: int, to_offset: int) -> int | None:
    """Accept a gap: move one partition's stored offset forward (see `offsets.skip`)."""
    if topic not in settings.topics:
        raise SinkConfigError(f"topic {topic} {_not_in(settings)}")
    with warehouse(settings) as engine, engine.begin() as conn:
        return offsets.skip(conn, settings.group_id, (topic, partition), to_offset)


def _not_in(settings: SinkSettings) -> str:
    return f"not in this sink's tables (OUTBOXKIT_SINK_TABLES has {', '.join(sorted(set(settings.topics)))})"
