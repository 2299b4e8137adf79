"""Relay configuration: one validated settings object per process, from `OUTBOXKIT_RELAY_*` and `.env`."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.kafka_settings import KafkaSettings


class RelaySettings(BaseSettings):
    """E.g. `OUTBOXKIT_RELAY_DATABASE_URL`, `OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS`."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_RELAY_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    database_url: SecretStr = SecretStr("sqlite:///outboxkit-app.db")
    source_id: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Names this outbox in checkpoints and transactional ids; unique per outbox database.",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    checkpoint_topic: str = "outboxkit.relay.checkpoints"
    batch_size: int = Field(500, ge=1, le=100_000, description="Events per Kafka transaction.")
    poll_interval: float = Field(0.5, gt=0, description="Seconds between polls of an empty outbox.")
    max_backoff: float = Field(10.0, gt=0, description="Longest wait between retries after a failure.")

    @property
    def transactional_id(self) -> str:
        """Derived from the source, never random: a restarted relay must fence its predecessor."""
        return f"outboxkit-relay.{self.source_id}"
