"""`outboxkit sink status`: per partition, where the warehouse is, how far behind, and why stopped.

Read from the sources of truth — stored offsets, dead letters and the table catalogue from the
warehouse, partition ends from Kafka — so it answers when no sink is running, which is when it is
needed most.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from confluent_kafka import Consumer
from sqlalchemy import Connection, select

from sink import dead_letters, offsets
from sink.dead_letters import STOPPED, Letter
from sink.partitions import ends, inspector, partitions, records_behind
from sink.records import Where
from sink.run import warehouse
from sink.settings import SinkSettings
from sink.tables import catalog
from sink.tables import dead_letters as dead_letters_table


@dataclass(frozen=True)
class PartitionStatus:
    topic: str
    partition: int
    stored: int | None  # next offset stored with the data; None: nothing consumed yet
    end: int  # last stable offset in Kafka
    lag: int
    stopped: str | None  # why the partition halted, if it did


@dataclass(frozen=True)
class TableStatus:
    table: str
    topic: str
    mode: str
    columns: int
    schema_version: int


@dataclass(frozen=True)
class SinkStatus:
    group_id: str
    partitions: list[PartitionStatus]
    tables: list[TableStatus]
    dead_letters: dict[str, int]
    latest_dead_letters: list[Letter]

    @property
    def lag(self) -> int:
        return sum(partition.lag for partition in self.partitions)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"lag": self.lag}, default=str, indent=2)

    def render(self) -> str:
        dead = sum(self.dead_letters.values())
        lines = [f"group {self.group_id}: {self.lag} record(s) behind, {dead} dead letter(s)"]
        for table in self.tables:
            lines.append(
                f"  table {table.table} <- {table.topic} ({table.mode}, {table.columns} payload columns, "
                f"schema version {table.schema_version})"
            )
        for p in self.partitions:
            stored = "nothing yet" if p.stored is None else str(p.stored)
            state = f"STOPPED: {p.stopped}" if p.stopped else "running"
            lines.append(f"  {p.topic}[{p.partition}]: stored {stored}, end {p.end}, lag {p.lag}; {state}")
        lines += [
            f"  {letter.action} {letter.topic}[{letter.partition}]@{letter.offset}: {letter.reason}"
            for letter in self.latest_dead_letters
        ]
        return "\n".join(lines)


def sink_status(settings: SinkSettings) -> SinkStatus:
    with warehouse(settings) as engine, engine.connect() as conn:
        stored = offsets.load(conn, settings.group_id, settings.topics)
        stops = _stops(conn, settings.group_id, stored)
        with inspector(settings.kafka) as consumer:
            wheres = partitions(consumer, settings.topics)
            found = [_partition(consumer, where, stored.get(where), stops.get(where)) for where in wheres]
        return SinkStatus(
            group_id=settings.group_id,
            partitions=found,
            tables=_tables(conn, settings),
            dead_letters=dead_letters.counts(conn, settings.group_id, settings.topics),
            latest_dead_letters=dead_letters.latest(conn, settings.group_id, settings.topics),
        )


def _partition(consumer: Consumer, where: Where, stored: int | None, stopped: str | None) -> PartitionStatus:
    """A partition's lag counts records from the stored offset (or the oldest Kafka still holds,
    when none is stored) to the end: a sink that applied everything is 0 behind."""
    [(start, end)] = ends(consumer, [where]).values()
    lag = records_behind(consumer, where, start if stored is None else max(start, stored), end)
    return PartitionStatus(where[0], where[1], stored, end, lag, stopped)


def _stops(conn: Connection, group_id: str, stored: dict[Where, int]) -> dict[Where, str]:
    """Partitions whose stored offset still sits on a record that stopped them."""
    table = dead_letters_table
    query = select(table.c.topic, table.c.partition, table.c.offset, table.c.reason).where(
        table.c.group_id == group_id, table.c.action == STOPPED
    )
    return {
        (topic, partition): reason
        for topic, partition, offset, reason in conn.execute(query)
        if stored.get((topic, partition), 0) <= offset
    }


def _tables(conn: Connection, settings: SinkSettings) -> list[TableStatus]:
    wanted = [mapping.table for mapping in settings.tables]
    query = select(catalog).where(catalog.c.table_name.in_(wanted)).order_by(catalog.c.table_name)
    return [
        TableStatus(row.table_name, row.topic, row.mode, len(json.loads(row.columns)), row.schema_version)
        for row in conn.execute(query)
    ]
