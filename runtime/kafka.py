"""Kafka client settings shared by every outboxkit process (relay, sink, tools).

Security and tuning go through `config`, passed to librdkafka untouched, so SASL/TLS need no
code from us: `OUTBOXKIT_RELAY_KAFKA__CONFIG='{"security.protocol": "SASL_SSL", ...}'`.
Values are `SecretStr`, so a password never shows up in a log line or a settings dump; JSON
numbers and booleans are taken as librdkafka takes them, as text (`{"linger.ms": 5}`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, SecretStr

# librdkafka's own log lines (broker reconnects, coordinator moves) go through Python logging
# under this name instead of straight to stderr, so applications filter and route them as usual.
KAFKA_LOGGER = logging.getLogger("outboxkit.kafka")
QUIET_SECONDS = 60.0  # one line per kind of librdkafka message per minute; the repeats at DEBUG
# Errors librdkafka reports twice, as an error and as a log line (`FAIL`): one is enough.
_ALSO_LOGGED = {KafkaError._TRANSPORT, KafkaError._RESOLVE}


def _as_text(config: object) -> object:
    """JSON numbers and booleans as the text librdkafka parses (`true`, not Python's `True`)."""
    if not isinstance(config, Mapping):
        return config  # pydantic says what is wrong with it
    return {
        name: str(value).lower()
        if isinstance(value, bool)
        else str(value)
        if isinstance(value, int | float)
        else value
        for name, value in config.items()
    }


class KafkaSettings(BaseModel):
    """Where the brokers are and how to talk to them."""

    bootstrap_servers: str = "127.0.0.1:19092"
    config: Annotated[dict[str, SecretStr], BeforeValidator(_as_text)] = Field(default_factory=dict)
    _log: ClientLog | None = PrivateAttr(None)

    def client_config(self, overrides: Mapping[str, object] | None = None) -> dict[str, Any]:
        """A librdkafka configuration: ours, then the user's passthrough, then `overrides`.

        Every client made from these settings reports through one `ClientLog`: a process says
        once that the cluster is unreachable, however many clients it has."""
        log = self.client_log
        base: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "logger": log,
            "error_cb": log.error,
        }
        base.update({name: secret.get_secret_value() for name, secret in self.config.items()})
        base.update(overrides or {})
        return base

    @property
    def client_log(self) -> ClientLog:
        if self._log is None:
            self._log = ClientLog(self.bootstrap_servers)
        return self._log


class ClientLog:
    """What the Kafka clients of one process report, said through Python logging in our words.

    librdkafka reports a cluster it cannot reach as a stream of connection failures — measured
    against a closed port: about 20 log lines and as many error callbacks a second, per client —
    that say nothing of what the process does about it. This says it once (`Kafka is unreachable
    at <servers> ...; retrying`), and once more when our code next gets an answer (`reached`).
    librdkafka's own lines go out at most once a minute per kind (its facility, or error code), at
    their level but never above WARNING — librdkafka retries what it logs — and the repeats at
    DEBUG. Thread-safe: librdkafka's callbacks run on whichever thread polls a client.
    """

    def __init__(
        self, servers: str, *, quiet: float = QUIET_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._servers = servers
        self._quiet = quiet
        self._clock = clock
        self._said: dict[str, float] = {}  # kind -> when a line of it was last logged above DEBUG
        self._unreachable = False
        self._guard = threading.Lock()

    def log(self, level: int, message: str, *args: object) -> None:
        """The `logger` librdkafka calls: `log(level, "%s [%s] %s", facility, client, text)`."""
        kind = str(args[0]) if args else message
        self._limited(kind, min(level, logging.WARNING), message, *args)

    def error(self, error: KafkaError) -> None:
        """The `error_cb`: client-level errors, which librdkafka retries unless fatal."""
        if error.fatal():
            KAFKA_LOGGER.error("fatal Kafka client error: %s", error.str())
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.went_away(error.str())
        elif error.code() in _ALSO_LOGGED:
            KAFKA_LOGGER.debug("Kafka client error, retried: %s", error.str())
        else:
            self._limited(
                f"error {error.code()}", logging.WARNING, "Kafka client error, retried: %s", error.str()
            )

    @property
    def unreachable(self) -> str | None:
        """What a readiness probe says while the clients report the cluster gone (`Reachability`)."""
        return f"Kafka is unreachable at {self._servers}" if self._unreachable else None

    def reached(self) -> None:
        """A Kafka call of ours got an answer: if the cluster was unreachable, say it is back."""
        with self._guard:
            back, self._unreachable = self._unreachable, False
        if back:
            # WARNING like the line that said it was gone, so whoever saw that one sees this one.
            KAFKA_LOGGER.warning("Kafka at %s answers again", self._servers)

    def went_away(self, detail: str) -> None:
        """No broker answers (librdkafka says so, or a `BrokerCheck` found it): said once."""
        with self._guard:
            said, self._unreachable = self._unreachable, True
        if not said:
            KAFKA_LOGGER.warning(
                "Kafka is unreachable at %s (%s); retrying until a broker answers — check that it runs "
                "and that the bootstrap servers are right",
                self._servers,
                detail,
            )

    def _limited(self, kind: str, level: int, message: str, *args: object) -> None:
        now = self._clock()
        with self._guard:
            last = self._said.get(kind)
            loud = last is None or now - last >= self._quiet
            if loud:
                self._said[kind] = now
        KAFKA_LOGGER.log(level if loud else logging.DEBUG, message, *args)


class BrokerCheck:
    """Asks Kafka for its brokers, at most every `interval` seconds, and tells the `ClientLog`.

    An idle process talks to Kafka too little to notice it go or come back: a relay with nothing to
    publish calls no broker, and a consumer on a quiet topic that lost the cluster gets no record
    that would say it is back. The main loop calls this when idle (never a probe), so readiness
    follows the cluster within `interval` seconds, for one metadata request each time.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kafka = kafka
        self._interval, self._timeout, self._clock = interval, timeout, clock
        self._next = 0.0
        self._admin: AdminClient | None = None

    def __call__(self) -> None:
        if self._clock() < self._next:
            return
        self._next = self._clock() + self._interval
        if self._admin is None:
            self._admin = AdminClient(self._kafka.client_config())
        try:
            self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            self._kafka.client_log.went_away(exc.args[0].str())
        else:
            self._kafka.client_log.reached()
