"""verify: checks, independently of the relay and the sink, that what the app committed reached
Kafka and the warehouse exactly once and in per-key order.

It reads Kafka with its own read_committed consumer and queries the databases directly; the only
outboxkit code it shares is the wire contract (`wire`: header names, envelopes).
"""

from verify.checks import Findings
from verify.run import verify
from verify.settings import VerifySettings

__all__ = ["Findings", "VerifySettings", "verify"]
