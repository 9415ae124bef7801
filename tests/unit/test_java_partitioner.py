"""The gateway partitions keyed records as Kafka's Java client does (PostHog's consumers rely on all
events of a distinct id landing on one partition): murmur2 of the key, made positive, modulo the
partition count. The expected partitions were computed with kafka-clients 4.4.0
(`Utils.toPositive(Utils.murmur2(key)) % n`, the built-in partitioner's formula); the first six keys
are those of Kafka's own murmur2 unit test."""

from __future__ import annotations

import random

import pytest

from gateway.sinks.kafka_producer import java_partitioner

# key, Java's Utils.murmur2(key), partition of 16, partition of 3
JAVA = [
    ("21", -973932308, 12, 0),
    ("foobar", -790332482, 14, 0),
    ("a-little-bit-long-string", -985981536, 0, 2),
    ("a-little-bit-longer-string", -1486304829, 3, 2),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 13, 2),
    ("abc", 479470107, 11, 0),
    ("", 275646681, 9, 0),
    ("019a3c8e-1f2b-7cde-8f00-123456789abc", 2085938446, 14, 1),
    ("distinct-id-42", 356498989, 13, 1),
    ("é", 186971271, 7, 0),
]


@pytest.mark.parametrize(("key", "java_hash", "of_16", "of_3"), JAVA)
def test_keyed_records_go_to_the_java_clients_partition(key: str, java_hash: int, of_16: int, of_3: int) -> None:
    encoded = key.encode()
    assert java_partitioner(encoded, list(range(16)), list(range(16))) == of_16
    assert java_partitioner(encoded, list(range(3)), list(range(3))) == of_3
    # Only the positive hash counts (Java's toPositive), so the sign of murmur2 must not leak in.
    assert (java_hash & 0x7FFFFFFF) % 16 == of_16


def test_a_keyed_record_ignores_which_partitions_are_available() -> None:
    """Java hashes over all partitions: an unavailable leader does not move a key elsewhere."""
    assert java_partitioner(b"foobar", list(range(16)), [0, 1, 2]) == 14


def test_records_without_a_key_go_to_an_available_partition() -> None:
    random.seed(7)
    chosen = {java_partitioner(None, list(range(8)), [2, 5]) for _ in range(200)}
    assert chosen == {2, 5}
    assert {java_partitioner(None, list(range(3)), []) for _ in range(200)} == {0, 1, 2}
