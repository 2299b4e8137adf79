"""Shards: how several relays split one outbox without breaking per-key order.

Each outbox row carries `shard_key`, a hash of its Kafka key; shard i of n holds the rows with
`shard_key % n == i` (NULL counting as 0). A key therefore always belongs to one shard, and each
shard is published by one relay at a time, with its own checkpoint and its own stable
`transactional.id` (see `relay.leases`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Shard:
    """Shard `index` of `count`."""

    index: int
    count: int

    @property
    def suffix(self) -> str:
        """Appended to the source id in checkpoint keys and transactional ids; none for one shard.

        `#` cannot occur in a source id, so one source's keys never look like another's.
        """
        return "" if self.count == 1 else f"#{self.index}of{self.count}"

    def __str__(self) -> str:
        return f"shard {self.index + 1}/{self.count}"


ONLY = Shard(0, 1)
