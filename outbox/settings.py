"""App-side settings, from `OUTBOXKIT_OUTBOX_*` and `.env`; per session through `session.info`.

Nothing is read at import time: the defaults load on first use, and a session (or a sessionmaker)
can carry its own: `sessionmaker(engine, info={SETTINGS_KEY: OutboxSettings(max_payload_bytes=...)})`.
"""

from __future__ import annotations

from functools import cache
from typing import Final, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.orm import Session

from wire.jobs import DEFAULT_JOBS_TOPIC

SETTINGS_KEY: Final = "outboxkit.settings"
WriteAs = Literal["row", "message"]


class OutboxSettings(BaseSettings):
    """Limits applied when events are written."""

    model_config = SettingsConfigDict(env_prefix="OUTBOXKIT_OUTBOX_", env_file=".env", extra="ignore")

    max_payload_bytes: int = Field(
        900_000,
        ge=1,
        description="Largest serialised payload accepted. Kafka's default message.max.bytes is about "
        "1 MiB for the whole record, headers and key included, so the default leaves room for them.",
    )
    notify_channel: str = Field(
        "outboxkit",
        description="PostgreSQL channel a background thread NOTIFYs after commits that wrote events, so the "
        "relay (listening on the same channel) publishes at once. Empty: no notifications, the relay polls.",
    )
    topic_template: str = Field(
        "outbox.event.{aggregate_type}",
        description="Topic of a model that names none, as Debezium's outbox event router routes by default.",
    )
    write_as: WriteAs = Field(
        "row",
        description="How events are written on PostgreSQL. `row`: an outbox row, which every relay reads. "
        "`message`: a transactional logical decoding message in the write-ahead log, no row (no table "
        "growth, no cleanup); only a relay with OUTBOXKIT_RELAY_CAPTURE=wal reads them, and the server "
        "needs wal_level=logical. Refused on SQLite.",
    )
    jobs_topic: str = Field(
        DEFAULT_JOBS_TOPIC,
        description="Topic of the jobs `outbox.jobs.enqueue()` writes: the one the jobs dispatcher reads "
        "(OUTBOXKIT_JOBS_TOPIC on its side).",
    )


@cache
def _defaults() -> OutboxSettings:
    return OutboxSettings()


def settings_for(session: Session) -> OutboxSettings:
    """The settings that apply to `session`: its own if it carries some, else the process defaults."""
    own = session.info.get(SETTINGS_KEY)
    return own if isinstance(own, OutboxSettings) else _defaults()
