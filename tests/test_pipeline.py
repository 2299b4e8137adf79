"""The relay's basic promises against the real broker: resume after the checkpoint, fencing.

The sink's own are in test_sink_*.py; the full crash proofs in test_relay_process.py and
test_sink_process.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine

from outbox.kafka_settings import KafkaSettings
from relay import FencedError, SqliteCapture
from relay.errors import CaptureError, ExitCode
from tests.conftest import Source
from tests.helpers import committed_event_ids, emit

Names = Callable[[str], str]


def test_a_restarted_relay_resumes_after_its_checkpoint_and_publishes_nothing_twice(
    kafka: KafkaSettings, source: Source
) -> None:
    first_ids = emit(source.app, source.topic, 3)
    assert source.relay().run(lambda: False, drain=True).published == 3

    later_ids = emit(source.app, source.topic, 2)
    second = source.relay()
    assert second.stats.position.after_id == 3
    assert second.run(lambda: False, drain=True).published == 2

    assert committed_event_ids(kafka, source.topic) == first_ids + later_ids


def test_a_relay_fenced_by_a_newer_instance_stops_and_its_batch_never_becomes_visible(
    kafka: KafkaSettings, source: Source
) -> None:
    ids = emit(source.app, source.topic, 4)
    zombie = source.relay()
    successor = source.relay()  # same source, same transactional id: fences the first

    with pytest.raises(FencedError) as fenced:
        zombie.step()
    assert fenced.value.exit_code == ExitCode.FENCED

    assert successor.run(lambda: False, drain=True).published == 4
    assert committed_event_ids(kafka, source.topic) == ids


def test_sqlite_capture_refuses_a_database_where_id_order_is_not_commit_order() -> None:
    with pytest.raises(CaptureError, match="skips rows"):
        SqliteCapture(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
