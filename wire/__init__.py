"""wire: the contract between the app's outbox, the relay, Kafka, the sink and any other consumer.

Standard library only, also indirectly (an import-linter contract holds it to that), so a process
or a third-party consumer that reads outboxkit topics loads neither SQLAlchemy nor pydantic nor a
Kafka client to understand them. One module per concept:

* `wire.envelope` — one event as it travels through Kafka (`Envelope`);
* `wire.errors` — the exception tree (`EnvelopeError`, `SigningKeyError`, `JobFormatError`);
* `wire.headers` — the header names and the JSON content type;
* `wire.jobs` — a background job (a Dramatiq message) carried as one outbox event;
* `wire.keys` — the aggregate key of a composite primary key;
* `wire.partitioning` — Kafka's partition of a key (murmur2) and the relay shard of a key;
* `wire.signing` — HMAC signatures proving a relay holding the key published a record.
"""

from wire.envelope import Envelope
from wire.errors import EnvelopeError, JobFormatError
from wire.jobs import Job
from wire.keys import composite_key
from wire.partitioning import murmur2, partition_for, shard_key
from wire.signing import Signer, Verifier

__all__ = [
    "Envelope",
    "EnvelopeError",
    "Job",
    "JobFormatError",
    "Signer",
    "Verifier",
    "composite_key",
    "murmur2",
    "partition_for",
    "shard_key",
]
