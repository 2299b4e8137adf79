"""The dispatcher's configuration: one validated settings object, from `OUTBOXKIT_JOBS_*` and `.env`."""

from __future__ import annotations

from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.kafka import KafkaSettings
from runtime.observe import EVERY_INTERFACE, HttpHost
from runtime.urls import usable_url
from wire.jobs import DEFAULT_JOBS_TOPIC

BROKER_SCHEMES: Final = ("redis", "rediss", "amqp", "amqps")


def _broker_url(url: SecretStr) -> SecretStr:
    """A URL of a broker Dramatiq has (Redis or RabbitMQ); the message never repeats it (a password)."""
    try:
        scheme = urlsplit(url.get_secret_value()).scheme
    except ValueError:
        scheme = "?"
    if scheme not in BROKER_SCHEMES:
        raise ValueError(
            f"the scheme {scheme!r} names no job broker; use redis://host:6379/0 (rediss:// with TLS) "
            "or amqp://user:password@host:5672/vhost (amqps:// with TLS)"
        )
    return url


class JobsSettings(BaseSettings):
    """E.g. `OUTBOXKIT_JOBS_BROKER_URL=redis://127.0.0.1:6379/0`,
    `OUTBOXKIT_JOBS_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092`."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_JOBS_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # an invalid value may be a secret (the broker's password)
    )

    broker_url: Annotated[SecretStr, AfterValidator(_broker_url)] = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="The Dramatiq broker the jobs go to: redis:// or rediss:// (RedisBroker), amqp:// or "
        "amqps:// (RabbitmqBroker with publisher confirms).",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topic: str = Field(DEFAULT_JOBS_TOPIC, min_length=1, description="The jobs topic the relay publishes to.")
    group_id: str = Field("outboxkit-jobs", min_length=1, description="The dispatchers' consumer group.")
    batch_size: int = Field(500, ge=1, le=100_000, description="Jobs per delivery (and offset commit).")
    poll_timeout: float = Field(0.5, gt=0, description="Seconds a poll waits for records.")
    max_backoff: float = Field(10.0, gt=0, description="Longest wait between retries of a broker away.")
    start_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds a starting dispatcher waits for Kafka (retrying, live and not ready) before it "
        "exits 1. 0: waits for as long as it takes (what Kubernetes wants).",
    )
    http_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics, /healthz, /readyz on this port (off when unset)."
    )
    http_host: HttpHost = EVERY_INTERFACE
    queues: list[str] = Field(
        ["default"],
        min_length=1,
        description="Queues whose depth and dead letters `outboxkit jobs status` shows and the dispatcher's "
        "outboxkit_jobs_dead_letters gauge sums (with every queue it has delivered to), e.g. "
        '\'["default", "emails"]\'.',
    )
    inbox_url: Annotated[SecretStr, AfterValidator(usable_url("sqlite", "postgresql"))] | None = Field(
        None, description="The workers' database (its inbox table), for `outboxkit jobs status`; optional."
    )
