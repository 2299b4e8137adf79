"""Typed domain events for `publish()`: pydantic models that carry their routing.

    class OrderShipped(Event, topic="shop.orders", aggregate_type="order", key="order_id"):
        order_id: int
        carrier: str

Class keywords: `aggregate_type` (required), `key` (the field holding the aggregate id, required),
`topic` (default: the session's `topic_template`, as the aggregate's model events — so a domain
event lands on its aggregate's topic, in order with its row changes), `event_type` (default: the
class name), `schema_version` (default 1).
Mistakes are reported when the class is defined, not when the first event is published.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from outbox.errors import ConfigurationError
from outbox.rows import Draft, check_topic
from outbox.settings import OutboxSettings


class Event(BaseModel):
    """Base class of domain events. The payload on the wire is the model's JSON."""

    outbox_route: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__()  # the keywords are ours; pydantic hands them on below

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__()
        missing = [name for name in ("aggregate_type", "key") if name not in kwargs]
        if missing:
            raise ConfigurationError(
                f"event {cls.__name__} must declare {', '.join(missing)} as class keywords"
            )
        unknown = set(kwargs) - {"topic", "aggregate_type", "key", "event_type", "schema_version"}
        if unknown:
            raise ConfigurationError(
                f"event {cls.__name__}: unknown class keyword(s) {', '.join(sorted(unknown))}"
            )
        if kwargs["key"] not in cls.model_fields:
            raise ConfigurationError(f"event {cls.__name__}: key {kwargs['key']!r} is not one of its fields")
        try:
            if kwargs.get("topic") is not None:
                check_topic(kwargs["topic"])
        except Exception as exc:
            raise ConfigurationError(f"event {cls.__name__}: {exc}") from exc
        cls.outbox_route = {"event_type": cls.__name__, "schema_version": 1, "topic": None, **kwargs}

    def to_draft(self, settings: OutboxSettings, headers: dict[str, str] | None = None) -> Draft:
        route = self.outbox_route
        return Draft(
            topic=route["topic"] or settings.topic_template.format(aggregate_type=route["aggregate_type"]),
            event_type=route["event_type"],
            aggregate_type=route["aggregate_type"],
            aggregate_id=str(getattr(self, route["key"])),
            payload=self.model_dump(mode="json"),
            headers=headers or {},
            schema_version=route["schema_version"],
        )
