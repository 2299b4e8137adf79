"""Relay configuration: one validated settings object per process, from `OUTBOXKIT_RELAY_*` and `.env`."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay.capture.source import CaptureMode
from runtime.kafka import KafkaSettings
from runtime.observe import EVERY_INTERFACE, HttpHost
from runtime.urls import usable_url
from wire import Signer
from wire.errors import SigningKeyError
from wire.signing import checked_secret


class RelaySettings(BaseSettings):
    """E.g. `OUTBOXKIT_RELAY_DATABASE_URL`, `OUTBOXKIT_RELAY_KAFKA__BOOTSTRAP_SERVERS`."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_RELAY_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # an invalid value may be a secret (the signing key, the URL)
    )

    database_url: Annotated[SecretStr, AfterValidator(usable_url("sqlite", "postgresql"))] = SecretStr(
        "sqlite:///outboxkit-app.db"
    )
    source_id: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Names this outbox in checkpoints and transactional ids; unique per outbox database.",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    capture: CaptureMode = Field(
        "poll",
        description="How the relay finds committed rows on PostgreSQL: `poll` (snapshot deltas, woken by "
        "NOTIFY) or `wal` (a logical replication slot; the role needs REPLICATION).",
    )
    heartbeat_interval: float = Field(
        10.0,
        ge=0,
        description="WAL capture: seconds between heartbeats of an idle relay (an empty Kafka transaction "
        "that moves the checkpoint past what other tables wrote, then the slot's confirmed position), "
        "so an idle outbox does not keep WAL. 0: off.",
    )
    checkpoint_topic: str = "outboxkit.relay.checkpoints"
    batch_size: int = Field(500, ge=1, le=100_000, description="Events per Kafka transaction.")
    poll_interval: float = Field(
        0.5,
        gt=0,
        description="Seconds between polls of an empty outbox (when no notification wakes it first).",
    )
    notify_channel: str = Field(
        "outboxkit",
        description="PostgreSQL channel to LISTEN on for the app's wake-up NOTIFY "
        "(OUTBOXKIT_OUTBOX_NOTIFY_CHANNEL on the app side). Empty: poll only.",
    )
    max_backoff: float = Field(10.0, gt=0, description="Longest wait between retries after a failure.")
    start_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds a starting relay waits for its database and Kafka (retrying, live and not "
        "ready) before it exits 1; rides out a service restart. 0: waits for as long as it takes (what "
        "Kubernetes wants). A standby is started once the database answered.",
    )
    shards: int = Field(
        1,
        ge=1,
        le=256,
        description="How many shards relays split a PostgreSQL outbox into (each published by one relay at a "
        "time). Must be equal for every relay of a source; SQLite takes 1.",
    )
    max_shards: int | None = Field(
        None, ge=1, description="Most shards one relay publishes at once; default all it can get."
    )
    lease_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds between lease checks: how soon a standby takes over a dead relay's shards.",
    )
    lease_timeout: float = Field(
        15.0,
        gt=0,
        description="A relay that has not checked its leases for this long (paused, stuck) loses them to a "
        "standby. Keep it above the longest Kafka commit (30 s at most) you want to ride out.",
    )

    kafka_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds one Kafka transaction call (commit, abort) may take before it is retried; "
        "after SIGTERM at most two of them pass before the relay exits.",
    )
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics, /healthz and /readyz on this port (off when unset).",
    )
    http_host: HttpHost = EVERY_INTERFACE
    cleanup: bool = Field(
        True, description="Delete published rows from the outbox (in short batches that never block writers)."
    )
    signing_key: SecretStr | None = Field(
        None,
        description="Sign every record (HMAC-SHA256, header outboxkit-signature) with this secret, at least "
        "32 bytes; sinks given the same key refuse records anyone else wrote. Off when unset.",
    )
    signing_key_id: str = Field(
        "1",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="Names the signing key in each signature, so sinks can accept an old and a new key "
        "while the relays switch (key rotation).",
    )
    retention: float = Field(
        0.0, ge=0, description="With cleanup, keep published rows this many seconds (e.g. for audits) first."
    )

    @model_validator(mode="after")
    def _timeout_above_interval(self) -> RelaySettings:
        if self.lease_timeout <= 2 * self.lease_interval:
            raise ValueError(
                "lease_timeout must be more than twice lease_interval, or healthy relays lose leases"
            )
        if self.lease_timeout <= 2 * self.poll_interval:
            raise ValueError(
                "lease_timeout must be more than twice poll_interval: an idle relay refreshes its "
                "leases once per poll interval, and would lose them"
            )
        return self

    @model_validator(mode="after")
    def _wal_on_postgresql(self) -> RelaySettings:
        if self.capture == "wal" and not self.database_url.get_secret_value().startswith("postgresql"):
            raise ValueError("capture=wal reads PostgreSQL's write-ahead log: set capture=poll for SQLite")
        return self

    @model_validator(mode="after")
    def _usable_key(self) -> RelaySettings:
        if self.signing_key is not None:
            try:
                checked_secret(self.signing_key_id, self.signing_key.get_secret_value().encode())
            except SigningKeyError as exc:  # named by field: the command spells it as its variable
                raise ValueError(f"signing_key: {exc}") from None
        return self

    @property
    def signer(self) -> Signer | None:
        """What signs the records, if signing is on."""
        if self.signing_key is None:
            return None
        return Signer(self.signing_key_id, self.signing_key.get_secret_value().encode())
