"""Where a key lives: Kafka's partition of a record key, and the relay shard of an aggregate key.

The partition is Kafka's own rule (murmur2 of the key bytes, as the Java client's default
partitioner and librdkafka's `murmur2_random` compute it), so a consumer in any language can tell
where an aggregate's events live. Shards use the same hash, so one key is always in one shard.
"""

from __future__ import annotations

from typing import Final

_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """32-bit MurmurHash2 with Kafka's seed, as the signed int Java's `Utils.murmur2` returns."""
    h = (0x9747B28C ^ len(data)) & _MASK
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = data[whole:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` among `partitions`."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def shard_key(key: str) -> int:
    """The non-negative hash relays shard the outbox by (`shard_key % shards`): one key, one shard."""
    return murmur2(key.encode()) & 0x7FFFFFFF
