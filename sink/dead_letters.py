"""Dead letters: records the sink will not apply, kept whole with the reason, in the batch's
transaction — so the offset can move past them and nothing is lost, and an operator can see,
fix and replay them. A record that stops its partition is recorded too (action `stopped`): its
offset does not move, and `outboxkit sink status` shows where and why the partition halted.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, select, text

from sink.records import DeadLetter, Where
from sink.tables import dead_letters

DEAD = "dead-letter"
STOPPED = "stopped"


def store(conn: Connection, group_id: str, letters: Sequence[DeadLetter]) -> None:
    """Record `letters`, replacing earlier verdicts on the same records (a replay, a new policy)."""
    if not letters:
        return
    offsets_by_partition: dict[Where, list[int]] = {}
    for letter in letters:
        offsets_by_partition.setdefault(letter.source.where, []).append(letter.source.offset)
    for (topic, partition), offsets in offsets_by_partition.items():
        conn.execute(
            text(
                "DELETE FROM outboxkit_dead_letters WHERE group_id = :group AND topic = :topic "
                'AND "partition" = :partition AND "offset" = ANY(:offsets)'
            ),
            {"group": group_id, "topic": topic, "partition": partition, "offsets": offsets},
        )
    conn.execute(insert(dead_letters), [_row(group_id, letter) for letter in letters])


def _row(group_id: str, letter: DeadLetter) -> dict[str, object]:
    headers = [[name, base64.b64encode(value).decode()] for name, value in letter.raw.headers]
    return {
        "group_id": group_id,
        "topic": letter.source.topic,
        "partition": letter.source.partition,
        "offset": letter.source.offset,
        "action": STOPPED if letter.stop else DEAD,
        "reason": letter.reason,
        "event_id": letter.event_id,
        "key": letter.raw.key,
        "value": letter.raw.value,
        "headers": json.dumps(headers),
    }


@dataclass(frozen=True)
class Letter:
    """A dead letter as status shows it."""

    topic: str
    partition: int
    offset: int
    action: str
    reason: str


def counts(conn: Connection, group_id: str, topics: Iterable[str]) -> dict[str, int]:
    """Dead letters per topic (stops not counted)."""
    query = (
        select(dead_letters.c.topic, func.count())
        .where(
            dead_letters.c.group_id == group_id,
            dead_letters.c.topic.in_(list(topics)),
            dead_letters.c.action == DEAD,
        )
        .group_by(dead_letters.c.topic)
    )
    return {topic: int(count) for topic, count in conn.execute(query)}


def latest(conn: Connection, group_id: str, topics: Iterable[str], limit: int = 10) -> list[Letter]:
    """The most recent verdicts, newest first."""
    query = (
        select(
            dead_letters.c.topic,
            dead_letters.c.partition,
            dead_letters.c.offset,
            dead_letters.c.action,
            dead_letters.c.reason,
        )
        .where(dead_letters.c.group_id == group_id, dead_letters.c.topic.in_(list(topics)))
        .order_by(dead_letters.c.recorded_at.desc(), dead_letters.c.offset.desc())
        .limit(limit)
    )
    return [Letter(*row) for row in conn.execute(query)]
