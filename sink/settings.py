"""Sink configuration: one validated settings object per process, from `OUTBOXKIT_SINK_*` and `.env`."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.kafka_settings import KafkaSettings


class SinkSettings(BaseSettings):
    """E.g. `OUTBOXKIT_SINK_WAREHOUSE_URL`, `OUTBOXKIT_SINK_TOPICS='["orders"]'`."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_SINK_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    warehouse_url: SecretStr = SecretStr("duckdb:///outboxkit-warehouse.duckdb")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str = "outboxkit-sink"
    topics: list[str] = Field(default_factory=list, min_length=1)
    isolation_level: str = Field("read_committed", description="Anything else is refused at start-up.")
    batch_size: int = Field(1000, ge=1, le=100_000, description="Records per warehouse transaction.")
    poll_timeout: float = Field(0.5, gt=0)
    max_backoff: float = Field(10.0, gt=0)
