"""Consumer offsets stored in the warehouse, next to the data they describe.

Kafka-side commits would be a second system to keep in step (and a crash between the two
duplicates or loses rows); here the offsets row is updated in the same transaction as the batch,
and on assignment the consumer seeks to what this table says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import BigInteger, Column, Connection, Integer, MetaData, String, Table, and_, select, update
from sqlalchemy.dialects.postgresql import insert

TopicPartitionKey = tuple[str, int]

offsets_metadata = MetaData()

offsets_table = Table(
    "outboxkit_offsets",
    offsets_metadata,
    Column("group_id", String(255), primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)


def load(conn: Connection, group_id: str, topics: Iterable[str]) -> dict[TopicPartitionKey, int]:
    """Next offset to consume per (topic, partition) for this group; absent means 'from the start'."""
    query = select(offsets_table).where(
        and_(offsets_table.c.group_id == group_id, offsets_table.c.topic.in_(list(topics)))
    )
    return {(row.topic, row.partition): row.next_offset for row in conn.execute(query)}


def store(conn: Connection, group_id: str, next_offsets: Mapping[TopicPartitionKey, int]) -> None:
    """Move the stored offsets forward, inside the caller's (the batch's) transaction."""
    for (topic, partition), next_offset in next_offsets.items():
        where = and_(
            offsets_table.c.group_id == group_id,
            offsets_table.c.topic == topic,
            offsets_table.c.partition == partition,
        )
        if conn.execute(update(offsets_table).where(where).values(next_offset=next_offset)).rowcount == 0:
            conn.execute(
                insert(offsets_table).values(
                    group_id=group_id, topic=topic, partition=partition, next_offset=next_offset
                )
            )
