"""The wire contract's exception tree. Every class is a `ValueError`: each says that bytes or a key
handed to the contract are not what it defines, so code that already catches `ValueError` for bad
input (a pydantic validator, say) keeps catching them.

    WireError                 the contract's root: never raised itself
    ├── EnvelopeError         a Kafka record that is not an outboxkit envelope; the consumer keeps
    │                         its raw bytes (`key`, `value`) and dead-letters it, never drops it
    ├── SigningKeyError       a signing key id or secret that cannot be used; the operator sets a
    │                         valid key id and at least 32 random bytes
    └── JobFormatError        an event on the jobs topic whose payload is not a job (`wire.jobs`);
                              the dispatcher stops before it, the record stays in Kafka

A wrong argument that is a bug of the caller (a topic of 0 partitions) raises a plain
`ValueError`, as the standard library does, and is not in this tree.
"""

from __future__ import annotations


class WireError(ValueError):
    """Base of every error the wire contract raises."""


class EnvelopeError(WireError):
    """A Kafka record that is not an outboxkit envelope. Carries the raw record for its dead letter."""

    def __init__(self, reason: str, *, key: bytes | None, value: bytes | None) -> None:
        super().__init__(f"not an outboxkit event: {reason}")
        self.reason = reason
        self.key = key
        self.value = value


class SigningKeyError(WireError):
    """A signing key id or secret a signer or verifier refuses; the message says what is wrong."""


class JobFormatError(WireError):
    """A jobs-topic event whose payload is not a `wire.jobs.Job`; the message says what is wrong."""
