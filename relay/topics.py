"""Creating topics the relay depends on (its checkpoint topic; event topics in the demo)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from relay.errors import RelayError
from runtime.kafka import KafkaSettings


def ensure_topic(
    kafka: KafkaSettings, name: str, *, partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    """Create `name` unless it exists. An existing topic is left as it is, whatever its settings."""
    admin = AdminClient(kafka.client_config())
    futures = admin.create_topics([NewTopic(name, partitions, -1, config=config or {})], request_timeout=30)
    try:
        futures[name].result(timeout=60)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise RelayError(f"cannot create Kafka topic {name!r}: {error.str()}") from exc
