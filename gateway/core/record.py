"""The unit every sink receives: one Kafka message exactly as PostHog capture would produce it."""

from __future__ import annotations

from typing import NamedTuple


class Record(NamedTuple):
    """A Kafka message: topic, partition key, headers and the serialized CapturedEvent value.

    `key` is None for messages produced without a key (random partition). A NamedTuple because one
    is built per event on the hot path, and tuples are several times cheaper to create than
    frozen dataclasses.
    """

    topic: str
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    value: bytes

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None
