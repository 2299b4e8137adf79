"""The relay loop: capture -> publish (with checkpoint) -> repeat. Deliberately thin.

All guarantees live in the parts: the capture source's commit order, and the publisher's
transaction that carries the checkpoint. The loop only keeps the position in memory, retries
what librdkafka calls retriable or abortable, and stops on anything fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import create_engine

from outbox.backoff import Backoff
from relay.capture import CaptureSource, Position, capture_for
from relay.checkpoint import Checkpoints
from relay.errors import CaptureError, PublishAbortedError
from relay.publisher import TransactionalPublisher
from relay.settings import RelaySettings

log = logging.getLogger("outboxkit.relay")


@dataclass
class RelayStats:
    published: int = 0
    transactions: int = 0
    aborted: int = 0
    position: Position = field(default_factory=Position)


class Relay:
    """Publishes one outbox source to Kafka, exactly once for read_committed consumers."""

    def __init__(
        self,
        capture: CaptureSource,
        publisher: TransactionalPublisher,
        checkpoints: Checkpoints,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._capture = capture
        self._publisher = publisher
        self._checkpoints = checkpoints
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._backoff = backoff or Backoff(sleep=sleep)
        self._sleep = sleep
        self.stats = RelayStats()

    def start(self) -> None:
        """Fence older instances, then resume from the committed checkpoint (in that order)."""
        self._checkpoints.ensure_topic()
        self._publisher.start()
        self.stats.position = self._checkpoints.read()
        log.info("relay resuming after %s", self.stats.position)

    def step(self) -> int:
        """Publish the next batch, if any, in one transaction; return how many events it held."""
        batch = self._capture.fetch(self.stats.position, self._batch_size)
        if batch.records:
            envelopes = [record.envelope for record in batch.records]
            self._publisher.publish(envelopes, self._checkpoints.record(batch.position))
            self.stats.published += len(envelopes)
            self.stats.transactions += 1
            log.debug(
                "committed Kafka transaction with %d events, checkpoint after %s",
                len(envelopes),
                batch.position,
            )
        self.stats.position = batch.position
        return len(batch.records)

    def run(self, should_stop: Callable[[], bool], *, drain: bool = False) -> RelayStats:
        """Loop until `should_stop()`; with `drain`, also stop once the outbox is empty."""
        while not should_stop():
            try:
                published = self.step()
            except (CaptureError, PublishAbortedError) as exc:
                self.stats.aborted += isinstance(exc, PublishAbortedError)
                log.warning("%s; retried after %.1fs", exc, self._backoff.wait())
                continue
            self._backoff.reset()
            if published == 0:
                if drain:
                    break
                self._sleep(self._poll_interval)
        self._publisher.close()
        return self.stats


def relay_from_settings(settings: RelaySettings) -> Relay:
    """Compose a relay from its settings: the one place that picks the parts."""
    engine = create_engine(settings.database_url.get_secret_value())
    checkpoints = Checkpoints(settings.kafka, settings.checkpoint_topic, settings.source_id)
    return Relay(
        capture_for(engine),
        TransactionalPublisher(settings.kafka, settings.transactional_id),
        checkpoints,
        batch_size=settings.batch_size,
        poll_interval=settings.poll_interval,
        backoff=Backoff(maximum=settings.max_backoff),
    )
