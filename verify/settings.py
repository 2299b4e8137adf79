"""What `outboxkit verify` compares: topics, and optionally the app database and the warehouse."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.kafka import KafkaSettings
from runtime.urls import usable_url

DatabaseUrl = Annotated[SecretStr, AfterValidator(usable_url())]


class VerifySettings(BaseSettings):
    """E.g. `OUTBOXKIT_VERIFY_TOPICS='["shop.orders"]'`, `OUTBOXKIT_VERIFY_APP_DATABASE_URL=...`."""

    model_config = SettingsConfigDict(
        env_prefix="OUTBOXKIT_VERIFY_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: list[str] = Field(min_length=1, description="Topics whose events are checked.")
    app_database_url: DatabaseUrl | None = Field(
        None, description="The outbox's database: committed versions per aggregate (outbox_versions)."
    )
    aggregate_types: list[str] | None = Field(
        None,
        description="The aggregate types the topics carry (default: those found in them); only "
        "their versions, pending events and dead letters are checked.",
    )
    warehouse_url: DatabaseUrl | None = Field(None, description="The sink's warehouse.")
    log_table: str | None = Field(None, description="A sink table in append mode fed by the topics.")
    state_table: str | None = Field(None, description="A sink table in upsert mode fed by the topics.")
    source_table: str | None = Field(
        None,
        description="The app table the state table mirrors: its rows are compared with the state "
        "table's live rows (run it once writes have stopped and the sink has caught up).",
    )
    source_columns: list[str] = Field(
        ["id"],
        min_length=1,
        description="The source table's key column, then the columns compared (named alike in the "
        "state table, whose key is `_key`).",
    )
    delete_types: tuple[str, ...] = Field(
        ("*Deleted",), description="Event types that delete (as the sink's)."
    )
