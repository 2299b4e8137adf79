"""What the sink needs of a warehouse: the `Warehouse` interface and the batch it is handed.

The sink owns no guarantee of its own; a `Warehouse` does. SQL databases implement it today
(`sink.writer.SqlWriter`); DuckLake and Iceberg are to implement it next, so it names no
SQLAlchemy type, only the sink's own data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from sink.mapping import Row, TableSchema
from sink.records import DeadLetter, Where


@dataclass
class Batch:
    """What the sink hands a warehouse: rows per table, dead letters, offset moves, working schemas."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    moves: dict[Where, tuple[int | None, int]] = field(default_factory=dict)  # from (None: no row), to
    schemas: dict[str, TableSchema] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one committed batch did: events applied, events skipped by the dedupe, dead letters."""

    applied: int = 0
    skipped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


class Warehouse(Protocol):
    """A warehouse target for one sink process.

    `write` is the exactly-once argument on the sink's side. In ONE transaction it commits the
    batch's rows (deduped against what the tables hold: a replayed or duplicated event changes
    nothing), its dead letters and stops, its delete markers, the column catalogue changes its
    working schemas need (tables created, columns added or widened, never narrowed), and the new
    offsets — all or nothing. Offsets move by compare-and-set: each only from the value in
    `Batch.moves` (None: no offset stored yet), so a partition another instance wrote meanwhile
    refuses the whole batch.

    A failure means nothing of the batch was committed, and says what to do:
    `PartitionMovedError` (re-read the offsets and the catalogue; settle nothing more of what was
    read), `RecordsRefusedError` (these records cannot be applied: settle them per policy and write
    again), `WarehouseError` (with `data`: a value refused, a retry cannot help; without: the
    warehouse is away, the same batch may be retried).

    Not thread-safe: one sink calls it from one thread. Another process may write the same
    warehouse at once (other partitions, or a zombie refused by the compare-and-set).
    """

    @property
    def schemas(self) -> Mapping[str, TableSchema]:
        """The committed columns per table: what a batch's working schemas start from."""
        ...

    def stored_offsets(self, group_id: str, topics: Iterable[str]) -> dict[Where, int]:
        """Next offset per partition as committed with the data; missing: from the start."""
        ...

    def write(self, group_id: str, batch: Batch) -> Outcome:
        """Commit `batch` and move its offsets, atomically (see the class's contract)."""
        ...

    def ping(self) -> bool:
        """Whether the warehouse answers at all (tells an outage from a batch it keeps refusing)."""
        ...

    def refresh(self) -> None:
        """Re-read the column catalogue: another instance may have widened a table."""
        ...

    def close(self) -> None:
        """Release the warehouse's connections (DuckDB: the file lock)."""
        ...
