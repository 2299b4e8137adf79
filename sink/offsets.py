"""Consumer offsets stored in the warehouse, advanced by compare-and-set inside each batch.

Kafka-side commits would be a second system to keep in step (a crash between the two duplicates or
loses rows). Here the offsets row moves in the batch's own transaction, and only from the value
this sink last read or wrote: if another instance moved it (a rebalance, or this process was
paused past its session and is now a zombie), the batch is refused whole and the partition is
re-read from the stored offset. That turns "one writer per partition" from a hope into a check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import ColumnElement, Connection, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from sink.errors import PartitionMovedError
from sink.records import Where
from sink.tables import offsets


def load(conn: Connection, group_id: str, topics: Iterable[str]) -> dict[Where, int]:
    """Next offset to consume per (topic, partition) for this group; absent means 'from the start'."""
    query = select(offsets).where(and_(offsets.c.group_id == group_id, offsets.c.topic.in_(list(topics))))
    return {(row.topic, row.partition): row.next_offset for row in conn.execute(query)}


def advance(conn: Connection, group_id: str, moves: Mapping[Where, tuple[int | None, int]]) -> None:
    """Set each partition's offset from `expected` (None: no row yet) to `next`, or raise
    `PartitionMovedError` if any stored value is not what this sink expected.

    The stored values are read first and compared: that is the check where the warehouse lets no
    other writer in meanwhile (a DuckDB file), or refuses the commit if one did (DuckLake), and
    where the driver cannot count updated rows (DuckDB 1.x). PostgreSQL, where another batch may
    commit between the read and the update, is held by the update's count and the primary key."""
    stored = load(conn, group_id, {topic for topic, _ in moves})
    for partition_at, (expected, _) in moves.items():
        if stored.get(partition_at) != expected:
            raise PartitionMovedError(*partition_at)
    for (topic, partition), (expected, next_offset) in moves.items():
        if expected is None:
            try:  # a concurrent first insert blocks on the key, then fails here
                conn.execute(
                    insert(offsets).values(
                        group_id=group_id, topic=topic, partition=partition, next_offset=next_offset
                    )
                )
            except IntegrityError:
                raise PartitionMovedError(topic, partition) from None
            continue
        where = and_(_row(group_id, (topic, partition)), offsets.c.next_offset == expected)
        if conn.execute(update(offsets).where(where).values(next_offset=next_offset)).rowcount == 0:
            raise PartitionMovedError(topic, partition)  # -1: not counted (DuckDB), checked above


def rewind(conn: Connection, group_id: str, targets: Mapping[Where, int]) -> dict[Where, int]:
    """Move stored offsets back to `targets` (never forward); returns the offsets now stored."""
    stored = load(conn, group_id, {topic for topic, _ in targets})
    result = {}
    for (topic, partition), target in targets.items():
        current = stored.get((topic, partition))
        if current is None or current <= target:
            continue  # nothing consumed past the target yet: nothing to replay
        conn.execute(update(offsets).where(_row(group_id, (topic, partition))).values(next_offset=target))
        result[(topic, partition)] = target
    return result


def skip(conn: Connection, group_id: str, where: Where, to: int) -> int | None:
    """Move one stored offset forward to `to` (never back): the operator gives up the records
    before it. Returns the offset now stored, None if the group has none for that partition."""
    stored = load(conn, group_id, {where[0]}).get(where)
    if stored is None or stored >= to:
        return stored
    conn.execute(update(offsets).where(_row(group_id, where)).values(next_offset=to))
    return to


def _row(group_id: str, where: Where) -> ColumnElement[bool]:
    """The stored offset of one group's partition."""
    return and_(offsets.c.group_id == group_id, offsets.c.topic == where[0], offsets.c.partition == where[1])
