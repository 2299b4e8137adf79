"""Sink configuration: one validated settings object per process, from `OUTBOXKIT_SINK_*` and `.env`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url

from runtime.kafka import KafkaSettings
from runtime.observe import EVERY_INTERFACE, HttpHost
from runtime.urls import parsed_url
from sink.loaders import loader_for
from sink.mapping import TableMapping
from sink.merge import MAX_VERSION_JUMP
from wire import Verifier
from wire.signing import checked_secret


def _writable(url: SecretStr) -> SecretStr:
    """A warehouse URL the sink has a writer for (plain postgresql:// meaning psycopg 3)."""
    parsed = parsed_url(url.get_secret_value(), ("duckdb", "ducklake", "postgresql"))
    driver = "psycopg" if parsed.drivername == "postgresql" else parsed.get_dialect().driver
    loader_for(parsed.get_backend_name(), driver)
    return url


class SinkSettings(BaseSettings):
    """E.g. `OUTBOXKIT_SINK_WAREHOUSE_URL=postgresql://...`,
    `OUTBOXKIT_SINK_TABLES='[{"topic": "shop.orders", "table": "orders"}]'`."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_SINK_",
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # an invalid value may be a secret (signing keys, URLs)
    )

    warehouse_url: Annotated[SecretStr, AfterValidator(_writable)] = Field(
        SecretStr("duckdb:///outboxkit-warehouse.duckdb"),
        description="duckdb:///file.duckdb, ducklake:///catalog.ducklake, "
        "ducklake+postgresql://user@host/db?data_path=/shared/dir or postgresql+psycopg://user@host/db",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    group_id: str = Field("outboxkit-sink", description="Consumer group; offsets are stored per group.")
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=249,
        description="Static group membership (Kafka's group.instance.id), unique per running sink, e.g. "
        "the pod name: a sink restarted under the same id within session.timeout.ms gets its "
        "partitions back without a rebalance of the others. Unset: dynamic membership.",
    )
    tables: list[TableMapping] = Field(min_length=1, description="One mapping per topic: table, mode, model.")
    isolation_level: str = Field("read_committed", description="Anything else is refused at start-up.")
    poison_policy: Literal["dlq", "stop"] = Field(
        "dlq", description="dlq: dead-letter bad records and go on; stop: halt their partition."
    )
    max_record_bytes: int = Field(1 << 20, ge=1, description="Larger record values are dead letters.")
    batch_size: int = Field(5000, ge=1, le=100_000, description="Records per warehouse transaction.")
    poll_timeout: float = Field(0.5, gt=0, description="Seconds a poll waits for records.")
    max_backoff: float = Field(10.0, gt=0, description="Longest wait between warehouse retries.")
    start_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds a starting sink waits for its warehouse and Kafka (retrying with backoff, "
        "live and not ready) before it exits 1; rides out a service restart. 0: waits for as long as "
        "it takes (what Kubernetes wants).",
    )
    http_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics, /healthz, /readyz on this port (off when unset)."
    )
    http_host: HttpHost = EVERY_INTERFACE
    max_version_jump: int = Field(
        MAX_VERSION_JUMP,
        ge=0,
        description="A version this far above the one a table holds for the key is refused (0: no limit).",
    )
    signing_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Key id -> secret of the relays' signing keys; when set, unsigned or badly signed "
        "records are refused. Two entries while the relays switch keys.",
    )

    @field_validator("signing_keys")
    @classmethod
    def _usable_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key_id, secret in keys.items():
            checked_secret(key_id, secret.get_secret_value().encode())  # a ValueError pydantic reports
        return keys

    @model_validator(mode="after")
    def _one_mapping_per_table(self) -> SinkSettings:
        names = [mapping.table for mapping in self.tables]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"tables: each table may be fed by one mapping, {', '.join(twice)} repeat")
        return self

    @model_validator(mode="after")
    def _partitions_on_a_lakehouse(self) -> SinkSettings:
        partitioned = sorted(mapping.table for mapping in self.tables if mapping.partition_by)
        if partitioned and not make_url(self.warehouse_url.get_secret_value()).drivername.startswith(
            "ducklake"
        ):
            raise ValueError(
                f"tables: partition_by ({', '.join(partitioned)}) partitions lakehouse tables, and this "
                "warehouse is not one: remove it, or write to a ducklake:// warehouse"
            )
        return self

    @property
    def verifier(self) -> Verifier | None:
        """What checks the records' signatures, if signing is on."""
        if not self.signing_keys:
            return None
        return Verifier(
            {key_id: secret.get_secret_value().encode() for key_id, secret in self.signing_keys.items()}
        )

    @property
    def topics(self) -> list[str]:
        """The topics to consume, each once (one topic may feed several tables)."""
        return list(dict.fromkeys(mapping.topic for mapping in self.tables))
