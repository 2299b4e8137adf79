"""`OutboxMixin`: every committed insert, update and delete of a model becomes one outbox event.

    class Order(OutboxMixin, Base):
        __tablename__ = "orders"
        __outbox__ = Outbox(topic="shop.orders", aggregate_type="order")
        ...

How it captures: at flush. `before_flush` snapshots the last state of objects being deleted (it
cannot be loaded once the row is gone); `after_flush` — when new objects have their primary keys
and attribute history still holds the changes — drafts one event per changed object and writes
the rows on the flush's own connection. So the outbox rows share the business transaction:
committed together, rolled back together, savepoints included. Nothing is sent anywhere.

Order within one flush: inserts in the order objects were added, then updates, then deletes.

Payloads: `{"state": {...}}` for created and deleted (the last state), and for updated
`{"state": {...new state...}, "changed": {"field": {"old": x, "new": y}}}`. An update that changes
no captured field emits nothing.

Bulk ORM statements (`session.execute(update(Order)...)`, `insert(Order)` with a list) never
pass through per-object capture; on outbox models they are refused with `BulkOperationError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel
from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, UOWTransaction

from outbox import rows
from outbox.errors import BulkOperationError, ConfigurationError
from outbox.rows import Draft
from outbox.settings import OutboxSettings, settings_for
from outbox.wakeup import wrote_events
from wire import composite_key

Operation = Literal["created", "updated", "deleted"]
_SNAPSHOTS = "outboxkit.deleted-state"


@dataclass(frozen=True)
class Outbox:
    """What a model emits. Every field has a default; set only what differs.

    topic: where its events go (default `OutboxSettings.topic_template`, Debezium-style
    `outbox.event.<aggregate_type>`); aggregate_type: default the table name; key: attribute holding
    the aggregate id (default the primary key; a composite one as `envelope.composite_key` encodes
    it); payload: a pydantic model built from the object, or the attribute names to include (default
    all columns); created / updated / deleted: event type names, None to emit nothing for that
    operation (default `<Class>Created`, ...); schema_version: carried in every event's headers.
    """

    topic: str | None = None
    aggregate_type: str | None = None
    key: str | None = None
    payload: type[BaseModel] | Sequence[str] | None = None
    created: str | None = ""
    updated: str | None = ""
    deleted: str | None = ""
    schema_version: int = 1


class OutboxMixin:
    """Opt a declarative model in to outbox capture; configure it with `__outbox__ = Outbox(...)`."""

    __outbox__: ClassVar[Outbox] = Outbox()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__outbox__.topic is not None:
            try:
                rows.check_topic(cls.__outbox__.topic)
            except Exception as exc:
                raise ConfigurationError(f"model {cls.__name__}: {exc}") from exc
        _listen_once()
        event.listen(cls, "mapper_configured", _keep_old_values)


def _listen_once() -> None:
    # Registered when the first model opts in, not at import: importing outboxkit changes nothing.
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "do_orm_execute", _refuse_bulk)


def _keep_old_values(mapper: Mapper[Any], cls: type[OutboxMixin]) -> None:
    """Make every captured column load its old value before it is overwritten.

    Without this, setting an attribute expired by a commit (SQLAlchemy's default) records no old
    value: the update event would report `old: null`, and setting an unchanged value would look
    like a change and emit an event.
    """
    for prop in mapper.column_attrs:
        event.listen(getattr(cls, prop.key), "set", _noop_set, active_history=True)


def _noop_set(target: object, value: object, old: object, initiator: object) -> None:
    """Listening with active_history is what loads the old value; nothing else to do."""


def _before_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    snapshots = {
        id(obj): _state(obj, _columns(obj)) for obj in session.deleted if isinstance(obj, OutboxMixin)
    }
    session.info[_SNAPSHOTS] = snapshots


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    snapshots: dict[int, dict[str, Any]] = session.info.pop(_SNAPSHOTS, {})
    settings = settings_for(session)
    drafts: list[Draft | None] = []
    new = [o for o in session.new if isinstance(o, OutboxMixin)]
    if len(new) > 1:
        new.sort(key=lambda o: inspect(o).insert_order)
    drafts += [_draft(o, "created", _payload(o, _state(o, _columns(o))), settings) for o in new]
    drafts += [_update_draft(o, settings) for o in session.dirty if isinstance(o, OutboxMixin)]
    drafts += [
        _draft(o, "deleted", _payload(o, snapshots.get(id(o), {})), settings)
        for o in session.deleted
        if isinstance(o, OutboxMixin)
    ]
    written = [d for d in drafts if d is not None]
    if written:
        conn = session.connection()
        rows.write(conn, written, settings)
        wrote_events(session, conn.engine)


def _update_draft(obj: OutboxMixin, settings: OutboxSettings) -> Draft | None:
    columns = _columns(obj)
    attrs = inspect(obj).attrs
    changed = {}
    for name in columns:
        history = attrs[name].history
        if history.has_changes():
            old = history.deleted[0] if history.deleted else None
            changed[name] = {"old": old, "new": history.added[0] if history.added else None}
    if not changed:
        return None  # set to the same values, or only non-captured attributes changed
    payload = _payload(obj, _state(obj, columns))
    return _draft(obj, "updated", {**payload, "changed": changed}, settings)


class _Model(NamedTuple):
    """What every event of one model class shares, worked out once per class (a flush drafts an
    event per changed object; inspecting the mapper again for each is most of the mixin's cost)."""

    aggregate_type: str
    event_types: dict[Operation, str | None]
    columns: tuple[str, ...]  # captured in the payload's state
    key: tuple[str, ...]  # attributes whose values make the aggregate id


_models: dict[type[OutboxMixin], _Model] = {}


def _model(cls: type[OutboxMixin]) -> _Model:
    if (known := _models.get(cls)) is not None:
        return known
    config, mapper = cls.__outbox__, inspect(cls)
    payload = config.payload
    columns = payload if payload is not None and not isinstance(payload, type) else mapper.column_attrs.keys()
    key = (
        [config.key]
        if config.key is not None
        else [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    )
    names: dict[Operation, str | None] = {}
    for operation in ("created", "updated", "deleted"):
        name = getattr(config, operation)
        names[operation] = None if name is None else name or f"{cls.__name__}{operation.capitalize()}"
    aggregate_type = config.aggregate_type or cls.__tablename__  # type: ignore[attr-defined]
    known = _models[cls] = _Model(aggregate_type, names, tuple(columns), tuple(key))
    return known


def _draft(
    obj: OutboxMixin, operation: Operation, payload: dict[str, Any], settings: OutboxSettings
) -> Draft | None:
    model = _model(type(obj))
    name = model.event_types[operation]
    if name is None:
        return None
    return Draft(
        topic=obj.__outbox__.topic or settings.topic_template.format(aggregate_type=model.aggregate_type),
        event_type=name,
        aggregate_type=model.aggregate_type,
        aggregate_id=_aggregate_id(obj, model.key),
        payload=payload,
        schema_version=obj.__outbox__.schema_version,
    )


def _aggregate_id(obj: OutboxMixin, key: tuple[str, ...]) -> str:
    # The attributes, not the identity key: new objects get their identity only after the flush ends.
    if len(key) == 1 and obj.__outbox__.key is not None:
        return str(getattr(obj, key[0]))
    identity = [getattr(obj, name) for name in key]
    if any(part is None for part in identity):
        raise ConfigurationError(f"{type(obj).__name__} has no primary key value to use as the aggregate id")
    return composite_key([str(part) for part in identity])


def _columns(obj: OutboxMixin) -> tuple[str, ...]:
    return _model(type(obj)).columns


def _state(obj: OutboxMixin, columns: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in columns}


def _payload(obj: OutboxMixin, state: dict[str, Any]) -> dict[str, Any]:
    model = obj.__outbox__.payload
    if isinstance(model, type):
        return {"state": model.model_validate(obj, from_attributes=True).model_dump(mode="json")}
    return {"state": state}


def _refuse_bulk(execute_state: ORMExecuteState) -> None:
    if not (execute_state.is_update or execute_state.is_delete or execute_state.is_insert):
        return
    mapper = execute_state.bind_mapper
    if mapper is None or not issubclass(mapper.class_, OutboxMixin):
        return
    raise BulkOperationError(
        f"bulk {type(execute_state.statement).__name__.lower()} on {mapper.class_.__name__} "
        "bypasses outbox capture: "
        "load the objects and change them (one event each), or write the statement without the ORM entity "
        "and publish() the events you mean"
    )
