"""Kafka client settings shared by every outboxkit process (relay, sink, tools).

Security and tuning go through `config`, passed to librdkafka untouched, so SASL/TLS need no
code from us: `OUTBOXKIT_RELAY_KAFKA__CONFIG='{"security.protocol": "SASL_SSL", ...}'`.
Values are `SecretStr`, so a password never shows up in a log line or a settings dump.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, SecretStr

# librdkafka's own log lines (broker reconnects, coordinator moves) go through Python logging
# under this name instead of straight to stderr, so applications filter and route them as usual.
KAFKA_LOGGER = logging.getLogger("outboxkit.kafka")


class KafkaSettings(BaseModel):
    """Where the brokers are and how to talk to them."""

    bootstrap_servers: str = "127.0.0.1:19092"
    config: dict[str, SecretStr] = Field(default_factory=dict)

    def client_config(self, overrides: Mapping[str, str | int | bool] | None = None) -> dict[str, Any]:
        """A librdkafka configuration: ours, then the user's passthrough, then `overrides`."""
        base: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": KAFKA_LOGGER}
        base.update({name: secret.get_secret_value() for name, secret in self.config.items()})
        base.update(overrides or {})
        return base
