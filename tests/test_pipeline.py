"""The relay's basic promises against the real broker: resume after the checkpoint, fencing.

The sink's own are in test_sink_*.py; the full crash proofs in test_capture_contract.py (the
relay, once per capture source) and test_sink_process.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import pytest
from sqlalchemy import create_engine

from relay import FencedError, Relay, RelayService, SoleLease, SqliteCapture, TransactionalPublisher
from relay.errors import ConfigError, KafkaFatalError
from relay.shards import Shard
from runtime.backoff import Backoff
from runtime.kafka import KafkaSettings
from runtime.process import ExitCode
from tests.conftest import Source
from tests.helpers import committed_event_ids, emit
from wire import Envelope

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


def test_a_producer_broken_for_good_mid_transaction_is_replaced_and_publishes_nothing_twice(
    kafka: KafkaSettings, source: Source
) -> None:
    ids = emit(source.app, source.topic, 3)
    made: list[Relay] = []

    def relay_for(_: Shard) -> Relay:
        relay = source.relay()
        if not made:  # the first producer sends the batch, then breaks for good before the commit
            relay._publisher.publish = partial(dies_before_commit, relay._publisher)  # type: ignore[method-assign]
        made.append(relay)
        return relay

    service = RelayService(SoleLease(), relay_for, poll_interval=0.01, backoff=Backoff(initial=0.01))
    stats = service.run(lambda: False, drain=True)

    assert len(made) == 2  # the shard got a new producer; the process did not have to restart
    assert stats.published == 3
    assert committed_event_ids(kafka, source.topic) == ids  # the broken one's open transaction: aborted


def dies_before_commit(publisher: TransactionalPublisher, envelopes: Sequence[Envelope], _: object) -> None:
    """What a broker restarted mid-transaction did to relays in the chaos runs (librdkafka: fatal)."""
    producer = publisher._producer
    producer.begin_transaction()
    for envelope in envelopes:
        producer.produce(envelope.topic, envelope.payload, envelope.key)
    producer.flush(10)  # the records are on the broker, in a transaction that never commits
    publisher._unusable = True
    raise KafkaFatalError(
        "fatal Kafka error during commit: Broker: Producer attempted a transactional "
        "operation in an invalid state (injected)"
    )


def test_sqlite_capture_refuses_a_database_where_id_order_is_not_commit_order() -> None:
    with pytest.raises(ConfigError, match="skips rows"):  # a setting to fix, not an outage to retry
        SqliteCapture(create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
