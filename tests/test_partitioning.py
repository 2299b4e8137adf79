"""Kafka's key -> partition rule, as `wire.partition_for` states it, is the one Kafka uses.

Checked against the reference itself — the Java client's `Utils.murmur2` from the kafka-clients jar
the test broker runs on — and against the partitions the relay's producer actually wrote to.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.kafka import KafkaSettings
from tests.conftest import Source
from tests.helpers import committed_records, emit
from wire import murmur2, partition_for

KEYS = [
    b"",
    b"a",
    b"ab",
    b"abc",
    b"abcd",
    b"order-42",
    "kläger-ß-東京".encode(),
    bytes(range(256)),
    b"\xff" * 7,
]
KEYS += [f"customer-{n}".encode() for n in range(200)]

JAVA = """
import org.apache.kafka.common.utils.Utils;
import java.util.HexFormat;

public class Murmur {
    public static void main(String[] args) {
        for (String hex : args) {
            byte[] key = HexFormat.of().parseHex(hex.substring(1));
            System.out.println(Utils.murmur2(key));
        }
    }
}
"""


def test_murmur2_matches_the_java_client_bit_for_bit(kafka_classpath: str, tmp_path: Path) -> None:
    source = tmp_path / "Murmur.java"
    source.write_text(JAVA)
    result = subprocess.run(
        ["java", "-cp", kafka_classpath, str(source), *("x" + key.hex() for key in KEYS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert [int(line) for line in result.stdout.split()] == [murmur2(key) for key in KEYS]


def test_a_topic_needs_a_partition() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"k", 0)


def test_the_relay_puts_every_key_where_partition_for_says(
    kafka: KafkaSettings, new_topic: Callable[..., str], source: Source
) -> None:
    partitions = 7
    topic = new_topic(partitions)
    keys = [f"customer-{n}" for n in range(40)]
    for key in keys:
        emit(source.app, topic, 1, key=key)
    assert source.relay().run(lambda: False, drain=True).published == len(keys)

    placed = {record.key: record.partition for record in committed_records(kafka, topic)}
    assert sorted(placed) == sorted(keys)
    assert {key: partition_for(key.encode(), partitions) for key in keys} == placed
    assert len(set(placed.values())) > 1  # the keys really were spread
