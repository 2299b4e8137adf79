"""The broker under test really implements Kafka transactions.

Every exactly-once claim outboxkit makes rests on two broker behaviours. These tests pin them on
the broker the suite runs against, so a suite can never pass on a broker that lacks them.

How we know they would fail on a fake: `test_the_probes_catch_librdkafkas_mock_cluster` runs the
same probes against librdkafka's built-in mock cluster (`test.mock.num.brokers`), which we
measured to hand aborted records to read_committed consumers and to let a fenced producer commit;
the probes report both.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaError, Producer

from runtime.kafka import KafkaSettings
from tests.broker_checks import abort_then_commit, zombie_commit


def test_read_committed_consumers_never_see_an_aborted_transaction(
    kafka: KafkaSettings, new_topic: Callable[..., str]
) -> None:
    seen = abort_then_commit(kafka.bootstrap_servers, new_topic())

    assert seen.read_committed == [b"committed"]
    assert seen.read_uncommitted == [b"aborted", b"committed"]  # the aborted record is in the log


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    kafka: KafkaSettings, new_topic: Callable[..., str]
) -> None:
    error = zombie_commit(kafka.bootstrap_servers, new_topic())

    assert error is not None, "the zombie producer committed after being fenced"
    assert error.fatal()
    assert error.code() in {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def test_the_probes_catch_librdkafkas_mock_cluster() -> None:
    """The probes above are not vacuous: on a broker without real transactions they fail."""
    holder = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": ""})
    brokers = holder.list_topics(timeout=10).brokers.values()
    bootstrap = ",".join(f"{broker.host}:{broker.port}" for broker in brokers)

    seen = abort_then_commit(bootstrap, "probe")
    fenced = zombie_commit(bootstrap, "probe")

    assert seen.read_committed != [b"committed"] or fenced is None, (
        "librdkafka's mock cluster now filters aborted records and fences zombies; if that is "
        "confirmed, this witness no longer shows the probes catch a fake broker: find another"
    )
