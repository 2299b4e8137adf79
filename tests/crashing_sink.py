"""`outboxkit sink run`, SIGKILLed at a named point of its Nth batch: a test fixture, not a feature.

    python -m tests.crashing_sink before-write|before-commit|after-commit N

before-write: the batch was read from Kafka, nothing written; before-commit: everything written in
the open warehouse transaction, the commit not sent; after-commit: committed, before the sink
moves on. Settings come from OUTBOXKIT_SINK_* as for the real command.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from sqlalchemy import Connection, Engine, event

import sink.warehouse
import sink.writer
from outboxkit.cli import main

POINT, AT = sys.argv[1], int(sys.argv[2])
batches = 0
original_write = sink.writer.SqlWriter.write


def die_at(point: str) -> None:
    if point == POINT and batches == AT:
        os.kill(os.getpid(), signal.SIGKILL)


def write(self: sink.writer.SqlWriter, group_id: str, batch: sink.warehouse.Batch) -> Any:
    global batches  # noqa: PLW0603 - a counter across calls of the patched method
    batches += 1
    die_at("before-write")
    outcome = original_write(self, group_id, batch)
    die_at("after-commit")
    return outcome


@event.listens_for(Engine, "commit")
def before_commit(conn: Connection) -> None:
    die_at("before-commit")


sink.writer.SqlWriter.write = write  # type: ignore[method-assign]
sys.exit(main(["sink", "run"]))
