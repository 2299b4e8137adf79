"""The transactional publisher: each batch of events and the relay's checkpoint, atomically.

Error handling follows librdkafka's three classes exactly, because treating them alike is what
breaks other relays:

* **retriable** (e.g. a commit that timed out): the same call is repeated;
* **abortable** (`txn_requires_abort`): the transaction is aborted — nothing of it becomes
  visible — and `PublishAbortedError` tells the caller to re-send from its last checkpoint;
* **fatal** (fenced by a newer instance, or anything librdkafka marks fatal): the producer is
  unusable; `FencedError` ends the process with a named exit code (a zombie must stop), and
  `KafkaFatalError` has the service start a new producer for the shard, as a restart would.

One more case sits across them: a **record Kafka will never take** (larger than the topic or the
producer allows, a topic the relay may not write, a record the broker calls invalid). Retrying
the batch would fail for ever and hold back every key behind it, so the transaction is aborted
and `UnpublishableRecordError` names the record, for the relay to make it a dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from relay import names
from relay.checkpoint import CheckpointRecord
from relay.errors import (
    FencedError,
    KafkaFatalError,
    PublishAbortedError,
    RelayError,
    UnpublishableRecordError,
)
from runtime.kafka import KafkaSettings
from wire import Envelope, Signer

log = logging.getLogger(names.LOGGER)
T = TypeVar("T")
_FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
# Errors that say "this record, never": the same record fails the same way however often it is sent.
_RECORD_CODES = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError.POLICY_VIOLATION,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE,
}


class TransactionalPublisher:
    """Owns one transactional producer. Not thread-safe: one relay loop drives it.

    With a `signer`, every record carries an `outboxkit-signature` header (see `wire.signing`),
    so sinks configured with the key refuse records anyone else wrote to the topics.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        transactional_id: str,
        *,
        timeout: float = 30.0,
        stopping: Callable[[], bool] = lambda: False,
        signer: Signer | None = None,
        waiting: Callable[[str], None] = lambda why: None,
    ) -> None:
        self._timeout = timeout
        self._waiting = waiting  # told at each retry: alive and waiting for Kafka, not ready
        self._signer = signer
        self._stopping = stopping
        self._unusable = False  # fenced or fatal: the producer can do nothing more
        self._transactional_id = transactional_id
        self._client_log = kafka.client_log
        self._producer = Producer(
            kafka.client_config(
                {
                    "transactional.id": transactional_id,
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    # Java-client compatible partitioning, so every consumer agrees on a key's partition.
                    "partitioner": "murmur2_random",
                }
            )
        )

    def start(self) -> None:
        """Register the transactional id. This fences every older producer with the same id and
        aborts its open transaction — so call it before reading the checkpoint back."""
        self._call(lambda: self._producer.init_transactions(self._timeout), "init_transactions")
        self._client_log.reached()

    def publish(self, envelopes: Sequence[Envelope], checkpoint: CheckpointRecord) -> None:
        """Produce `envelopes` in order and move the checkpoint, in one Kafka transaction.

        On return both are committed. On `PublishAbortedError` neither is visible.
        """
        failures: dict[int, KafkaError] = {}  # batch index -> error; -1 is the checkpoint
        self._call(self._producer.begin_transaction, "begin_transaction")
        try:
            self._produce_all(envelopes, checkpoint, failures)
            self._call(
                lambda: self._producer.commit_transaction(self._timeout), "commit", in_transaction=True
            )
            self._client_log.reached()
        except PublishAbortedError:
            self._producer.poll(0)  # collect the delivery reports that say which record failed
            self._raise_for_record(envelopes, failures)
            raise

    def _produce_all(
        self, envelopes: Sequence[Envelope], checkpoint: CheckpointRecord, failures: dict[int, KafkaError]
    ) -> None:
        signer = self._signer
        for index, envelope in enumerate(envelopes):
            try:
                self._produce(
                    envelope.topic,
                    envelope.key,
                    envelope.payload,
                    (envelope if signer is None else signer.sign(envelope)).kafka_headers(),
                    on_failure=partial(failures.setdefault, index),
                )
            except KafkaException as exc:  # refused before sending, e.g. larger than the producer accepts
                failures[index] = exc.args[0]
                raise self._translate(exc, "produce", in_transaction=True) from exc
        self._produce(
            checkpoint.topic,
            checkpoint.key,
            checkpoint.value,
            [],
            on_failure=partial(failures.setdefault, -1),
        )

    def close(self) -> None:
        """Deliver what is queued — unless the producer is fenced or failed: then nothing it holds
        can commit, and a flush would only raise again (librdkafka serves the failed records'
        callbacks), masking the error that ended the relay and its exit code."""
        if self._unusable:
            return
        try:
            self._producer.flush(self._timeout)
        except (KafkaException, SystemError) as exc:
            log.warning("producer close: %s", exc)

    @staticmethod
    def _raise_for_record(envelopes: Sequence[Envelope], failures: dict[int, KafkaError]) -> None:
        for index, error in sorted(failures.items()):
            if index >= 0 and error.code() in _RECORD_CODES:
                event = envelopes[index]
                raise UnpublishableRecordError(
                    index,
                    f"Kafka refuses event {event.event_id} ({event.event_type}, {len(event.payload)} bytes) "
                    f"for topic {event.topic!r}: {error.str()}",
                )

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
        *,
        on_failure: Callable[[KafkaError], object],
    ) -> None:
        wire_headers: list[tuple[str, str | bytes | None]] = list(headers)

        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                on_failure(error)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=wire_headers, on_delivery=delivered
                )
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
            else:
                return

    def _call(self, operation: Callable[[], T], what: str, *, in_transaction: bool = False) -> T:
        """Run one producer call, repeating it while librdkafka calls its error retriable.

        Once the process is stopping it gives up instead (aborting an open transaction), so a
        broker that stays away cannot hold a SIGTERM for longer than two Kafka timeouts.
        """
        while True:
            try:
                return operation()
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                retriable = error.retriable() and not error.fatal() and not error.txn_requires_abort()
                if retriable and not self._stopping():
                    log.warning("%s retriable error, retrying: %s", what, error.str())
                    # Each try takes up to `timeout`: with the broker away the loop waits here for
                    # as long as the outage lasts, live (its liveness must not restart it) and unready.
                    self._waiting(f"Kafka {what} retried: {error.str()}")
                    continue
                raise self._translate(exc, what, in_transaction=in_transaction) from exc

    def _translate(self, exc: KafkaException, what: str, *, in_transaction: bool) -> RelayError:
        error: KafkaError = exc.args[0]
        self._unusable = error.code() in _FENCED_CODES or error.fatal()
        if error.code() in _FENCED_CODES:
            return FencedError(
                f"relay fenced during {what}: another relay now owns transactional.id "
                f"{self._transactional_id!r}. This instance must stop; its open transaction is aborted."
            )
        if error.fatal():
            return KafkaFatalError(f"fatal Kafka error during {what}: {error.str()}")
        if in_transaction:  # abortable, or a local error: either way nothing of it may become visible
            self._call(lambda: self._producer.abort_transaction(self._timeout), "abort_transaction")
            return PublishAbortedError(f"Kafka transaction aborted after {what} failed: {error.str()}")
        return RelayError(f"Kafka error during {what}: {error.str()}")
