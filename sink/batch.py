"""From one poll's records to one warehouse batch: rows per table, dead letters, offset moves.

Offsets move past every record that was applied, skipped as a duplicate or dead-lettered. A
record that stops its partition (policy `stop`, or an incompatible schema change) ends that
partition's share of the batch: the records before it are written, its offset is where the
partition stays, and it is recorded (action `stopped`) so status can say why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Literal

from sink.mapping import Row, TableMapping, TableSchema, to_row
from sink.records import Consumed, DeadLetter, Decoded, Where, decode
from sink.warehouse import Batch
from wire import Verifier

Policy = Literal["dlq", "stop"]
Refusals = Mapping[tuple[str, int, int], str]  # records the warehouse refused, and its words


def assemble(
    records: Iterable[Consumed],
    mappings: Mapping[str, Sequence[TableMapping]],
    schemas: Mapping[str, TableSchema],
    positions: Mapping[Where, int | None],
    *,
    max_bytes: int,
    policy: Policy,
    refused: Refusals,
    verifier: Verifier | None = None,
) -> tuple[Batch, set[Where]]:
    """The batch for `records` and the partitions that must stop. Records in `refused` (by
    topic, partition, offset) become dead letters with the reason given there; with a `verifier`,
    so do records not signed by a key it knows."""
    batch = Batch()
    stopping: set[Where] = set()
    for consumed in records:
        record = decode(consumed, max_bytes=max_bytes, verifier=verifier)
        source = record.source
        reason = refused.get((source.topic, source.partition, source.offset)) if refused else None
        if reason is not None:
            record = DeadLetter(source, record.raw, reason, getattr(record, "event_id", None))
        where = (source.topic, source.partition)  # `source.where`, without a property call per record
        if where in stopping:
            continue
        rows, letter = _map(record, mappings[where[0]], batch, schemas)
        if letter is not None and (letter.stop or policy == "stop"):
            stopping.add(where)
            batch.dead_letters.append(letter if letter.stop else _halt(letter))
            batch.moves[where] = (positions.get(where), source.offset)
            continue
        if letter is not None:
            batch.dead_letters.append(letter)
        for table, row in rows:
            batch.rows.setdefault(table, []).append(row)
        batch.moves[where] = (positions.get(where), source.offset + 1)
    return batch, stopping


def _map(
    record: Decoded | DeadLetter,
    mappings: Sequence[TableMapping],
    batch: Batch,
    schemas: Mapping[str, TableSchema],
) -> tuple[list[tuple[str, Row]], DeadLetter | None]:
    """The record's row for each table its topic feeds (and that takes its event type), and its
    dead letter if any table refused it (a stop if any refusal is one; the reason names the tables
    when a topic feeds several)."""
    if isinstance(record, DeadLetter):
        return [], record
    if record.envelope is not None and len(mappings) > 1:
        # A topic split by event type: a table skips what another table of the topic takes; an
        # event no table takes is refused by each (a dead letter naming them all).
        takers = [mapping for mapping in mappings if mapping.accepts(record.envelope.event_type)]
        mappings = takers or mappings
    rows: list[tuple[str, Row]] = []
    refused: list[tuple[str, DeadLetter]] = []
    for mapping in mappings:
        mapped = to_row(mapping, _working(batch, schemas, mapping.table), record)
        if isinstance(mapped, DeadLetter):
            refused.append((mapping.table, mapped))
        else:
            rows.append((mapping.table, mapped))
    if not refused:
        return rows, None
    if len(mappings) == 1:
        return rows, refused[0][1]
    reason = "; ".join(f"table {table}: {letter.reason}" for table, letter in refused)
    return rows, replace(refused[0][1], reason=reason, stop=any(letter.stop for _, letter in refused))


def _working(batch: Batch, committed: Mapping[str, TableSchema], table: str) -> TableSchema:
    """The batch's working schema of a table: a copy of the committed one, widened as new fields
    turn up."""
    if table not in batch.schemas:
        batch.schemas[table] = committed.get(table, TableSchema()).copy()
    return batch.schemas[table]


def _halt(letter: DeadLetter) -> DeadLetter:
    """A bad record under policy `stop`: the reason says how to get the partition going again."""
    return replace(
        letter,
        stop=True,
        reason=f"{letter.reason} (poison_policy=stop: the partition waits here; fix the producer and "
        "`outboxkit sink replay`, or set poison_policy=dlq, then restart)",
    )
