"""What the `outboxkit` command says when a command fails: one line that names the setting behind
the failure and what to do, and the exit code the README documents (`runtime.process.ExitCode`).

Third-party errors are translated here, at the command's boundary, and nowhere else: the
packages raise their own error trees with the cause chained (or let a driver's error through),
and this module walks the chain to the cause an operator can act on — a setting pydantic refused,
a Kafka property librdkafka does not know, a database or a broker that does not answer — and
names the environment variable that points there. An error it cannot place is a bug: it is not
translated, so its traceback shows.

It imports none of the processes, nor Kafka's client: an error of a package can only have been
raised once the command imported that package, so its classes are looked up among the modules
already loaded (`_loaded`). `outboxkit relay run` loads nothing of the sink, DuckDB or Alembic for
its failures, and `outboxkit migrate` runs on the app library's base install. An optional dependency
the command needs but the install lacks is one line naming the extra to install.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsError
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from runtime.errors import StartTimeoutError
from runtime.process import ExitCode

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

S = TypeVar("S", bound=BaseSettings)
_UNREACHABLE = ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_TIMED_OUT")  # KafkaError's codes
# What the extras bring (pyproject.toml): a command that misses one of these misses an extra.
_OPTIONAL = (
    "confluent_kafka",
    "duckdb",
    "duckdb_engine",
    "orjson",
    "psycopg",
    "psycopg2",
    "opentelemetry.sdk",
)
CHECK = "check that it is running and that the setting is right"


@dataclass(frozen=True)
class Failure:
    message: str
    exit_code: int


@dataclass
class Named:
    """The settings a command runs with, by the names an operator sets them with.

    A command loads its settings through `load`, so a failure names the environment variables
    behind it — even one that happens while the settings themselves are read."""

    command: str
    prefix: str = "OUTBOXKIT_"
    model: type[BaseSettings] | None = None
    databases: dict[str, str] = field(default_factory=dict)  # setting -> URL, password hidden
    bootstrap: tuple[str, str] | None = None  # setting -> the servers
    kafka_config: str = "the Kafka config"  # the setting of librdkafka's properties
    remedy: str = CHECK  # what to do about a service that does not answer
    extras: str = ""  # the install the command needs beyond the base one: "sink,duckdb"

    def load(self, model: type[S], **values: Any) -> S:
        self.model, self.prefix = model, str(model.model_config.get("env_prefix", ""))
        settings = model(**values)
        for name, value in settings:
            if isinstance(value, _loaded("runtime.kafka", "KafkaSettings")):
                self.bootstrap = (self.env(name, "bootstrap_servers"), value.bootstrap_servers)
                self.kafka_config = self.env(name, "config")
            elif name.endswith("_url") and value is not None:
                self.database(self.env(name), value)
        return settings

    def database(self, setting: str, url: str | SecretStr) -> None:
        text = url.get_secret_value() if isinstance(url, SecretStr) else url
        self.databases[setting] = make_url(text).render_as_string(hide_password=True)

    def env(self, *loc: str | int) -> str:
        """The environment variable of a field (`loc` as pydantic reports it), with the place inside
        its JSON value when the error is there: `OUTBOXKIT_SINK_TABLES[0]['table']`."""
        name, rest = self.prefix, list(loc)
        if rest and str(rest[0]).startswith("OUTBOXKIT_"):  # a field read through its alias
            name = str(rest.pop(0))
        model: type[BaseModel] | None = self.model if name == self.prefix else None
        while rest and model is not None and str(rest[0]) in model.model_fields:
            part = str(rest.pop(0))
            nested = model.model_fields[part].annotation
            model = nested if isinstance(nested, type) and issubclass(nested, BaseModel) else None
            name += part.upper() + ("__" if model is not None and rest else "")
        return name + "".join(f"[{part!r}]" for part in rest)

    def spelled(self, message: str) -> str:
        """`message` with the field names it mentions as environment variables (a check across
        fields: "lease_timeout must be more than twice lease_interval")."""
        for name in self.model.model_fields if self.model is not None else ():
            message = re.sub(rf"\b{name}\b", self.env(name), message)
        return message

    def json_fields(self, name: str) -> list[str]:
        """The settings a JSON value of field `name` comes from (a nested model's dicts and lists)."""
        if self.model is None or name not in self.model.model_fields:
            return [self.prefix + name.upper()]
        nested = self.model.model_fields[name].annotation
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            return [self.env(name)]
        complex_ = [
            sub for sub, info in nested.model_fields.items() if get_origin(info.annotation) in (dict, list)
        ]
        return [f"{self.env(name)}__{sub.upper()}" for sub in complex_]


def explain(exc: BaseException, named: Named) -> Failure | None:
    """The one line and exit code for `exc`; None for an error nobody foresaw (a bug)."""
    for translate in (
        _missing_extra,
        _settings,
        _kafka_config,
        _own_code,
        _started,
        _database,
        _broker,
        _own,
        _migration,
    ):
        failure = translate(exc, named)
        if failure is not None:
            return failure
    return None


def _loaded(module: str, name: str) -> Any:
    """The class `module.name` if `module` was imported, else one that nothing is an instance of
    (an error of a package nobody imported was not raised)."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded is not None else _NotLoadedError


class _NotLoadedError(Exception):
    """The stand-in for the error classes of a package that was not loaded."""


def _missing_extra(exc: BaseException, named: Named) -> Failure | None:
    """An extra the command needs is not installed (`pip install outboxkit` is the app library only)."""
    missing = exc.name or "" if isinstance(exc, ModuleNotFoundError) else ""
    if not named.extras or not any(missing == m or missing.startswith(f"{m}.") for m in _OPTIONAL):
        return None
    return Failure(
        f"{missing} is not installed; this command needs pip install 'outboxkit[{named.extras}]'",
        ExitCode.CONFIG,
    )


def _settings(exc: BaseException, named: Named) -> Failure | None:
    if isinstance(exc, ValidationError):
        errors = [
            f"{named.env(*error['loc'])}: {_reason(error)}" if error["loc"] else named.spelled(_reason(error))
            for error in exc.errors()
        ]
        return Failure(f"invalid settings: {'; '.join(errors)}", ExitCode.CONFIG)
    if isinstance(exc, SettingsError):
        found = re.search(r'field "([^"]+)"', str(exc))
        names = " or ".join(named.json_fields(found[1])) if found else named.prefix + "*"
        return Failure(f"invalid settings: {names} is not valid JSON ({exc.__cause__})", ExitCode.CONFIG)
    return None


def _reason(error: ErrorDetails) -> str:
    """pydantic's message, without its "Value error, " in front of our own validators' words."""
    cause = error.get("ctx", {}).get("error")
    return str(cause) if error["type"] == "value_error" and cause is not None else str(error["msg"])


def _kafka_config(exc: BaseException, named: Named) -> Failure | None:
    error = _kafka_error(exc, ("_INVALID_ARG",))
    if error is None:
        return None
    return Failure(
        f"invalid settings: {named.kafka_config}: {error.str()} (see librdkafka's CONFIGURATION.md for the "
        "properties and their values)",
        ExitCode.CONFIG,
    )


def _own_code(exc: BaseException, named: Named) -> Failure | None:
    """Our errors with a code of their own keep it: each package's configuration error (2, said as
    invalid settings, like pydantic's refusals) and a fenced relay (3)."""
    if not isinstance(
        exc,
        _loaded("relay", "RelayError") | _loaded("sink", "SinkError") | _loaded("jobs.errors", "JobsError"),
    ):
        return None
    if exc.exit_code == ExitCode.ERROR:
        return None
    prefix = "invalid settings: " if exc.exit_code == ExitCode.CONFIG else ""
    return Failure(prefix + _first_line(exc), exc.exit_code)


def _started(exc: BaseException, named: Named) -> Failure | None:
    """Start-up gave up: what it waited for, then the timeout that can be raised."""
    if not isinstance(exc, StartTimeoutError) or exc.__cause__ is None:
        return None
    cause = explain(exc.__cause__, named)
    reason = cause.message if cause is not None else _first_line(exc.__cause__)
    return Failure(
        f"{reason} — gave up after {exc.seconds:.0f} s of start-up ({named.prefix}START_TIMEOUT)",
        ExitCode.ERROR,
    )


def _database(exc: BaseException, named: Named) -> Failure | None:
    error = next((e for e in _chain(exc) if isinstance(e, DBAPIError)), None)
    if error is None:
        return None
    detail = _first_line(error.orig) if error.orig is not None else _first_line(error)
    where = " or ".join(f"{setting} ({url})" for setting, url in _suspects(named, detail).items())
    if isinstance(error, OperationalError | InterfaceError):
        return Failure(f"cannot use the database at {where}: {detail}; {named.remedy}", ExitCode.ERROR)
    return Failure(f"{_first_line(exc)}; the database: {where}", ExitCode.ERROR)


def _suspects(named: Named, detail: str) -> dict[str, str]:
    """The database settings an error may be about: those whose host and port it names, else all."""
    named_in = {
        setting: url
        for setting, url in named.databases.items()
        if (parsed := make_url(url)).host
        and f'"{parsed.host}"' in detail
        and f"port {parsed.port or 5432}" in detail
    }
    return named_in or named.databases or {"the database URL": "?"}


def _broker(exc: BaseException, named: Named) -> Failure | None:
    error = _kafka_error(exc, _UNREACHABLE)
    if error is None:
        return None
    setting, servers = named.bootstrap or ("the bootstrap servers", "?")
    return Failure(
        f"Kafka is unreachable at {servers} ({setting}): {error.str()}; {named.remedy}",
        ExitCode.ERROR,
    )


def _own(exc: BaseException, named: Named) -> Failure | None:
    own = (
        _loaded("relay", "RelayError"),
        _loaded("sink", "SinkError"),
        _loaded("jobs.errors", "JobsError"),
        _loaded("verify.errors", "VerifyError"),
    )
    if isinstance(exc, (*own, SQLAlchemyError)):
        return Failure(_first_line(exc), ExitCode.ERROR)
    return None


def _migration(exc: BaseException, named: Named) -> Failure | None:
    """Alembic's own refusal (an unknown revision, say) says it all."""
    return (
        Failure(str(exc), ExitCode.ERROR)
        if isinstance(exc, _loaded("alembic.util", "CommandError"))
        else None
    )


def _kafka_error(exc: BaseException, codes: Iterable[str]) -> KafkaError | None:
    """The KafkaError in `exc`'s chain whose code is one of `codes` (KafkaError's names for them)."""
    kafka_error = _loaded("confluent_kafka", "KafkaError")
    for cause in _chain(exc):
        if isinstance(cause, _loaded("confluent_kafka", "KafkaException")) and isinstance(
            next(iter(cause.args), None), kafka_error
        ):
            error: KafkaError = cause.args[0]
            if error.code() in {getattr(kafka_error, code) for code in codes}:
                return error
    return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
