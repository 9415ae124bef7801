"""Accumulating consumed messages into insert batches, and when to flush them.

A batch remembers, per (topic, partition), the contiguous offset range it consumed (rows and
rejects alike), so committing after the batch is stored is exact, and its deduplication token is
derived from that range plus the rows actually included: retrying the same batch reuses the
token, a different content never does.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from gateway.sinkworker.rows import Rejected, SourceMessage

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """Flush when any limit is reached."""

    max_rows: int = 100_000
    max_bytes: int = 32 * 1024 * 1024
    max_age_s: float = 1.0


@dataclass(slots=True)
class Batch:
    """Encoded rows (with their source messages) and rejects awaiting one insert."""

    seq: int
    created: float = field(default_factory=time.monotonic)
    rows: list[bytes] = field(default_factory=list)
    messages: list[SourceMessage] = field(default_factory=list)
    rejects: list[tuple[SourceMessage, Rejected]] = field(default_factory=list)
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    skipped: list[tuple[str, int, int]] = field(default_factory=list)
    size: int = 0

    def consumed(self, message: SourceMessage) -> None:
        """Extend the offset range of the message's partition."""
        tp = (message.topic, message.partition)
        first, _ = self.ranges.get(tp, (message.offset, message.offset))
        self.ranges[tp] = (first, message.offset)

    def add_row(self, message: SourceMessage, row: bytes) -> None:
        self.consumed(message)
        self.rows.append(row)
        self.messages.append(message)
        self.size += len(row)

    def add_reject(self, message: SourceMessage, error: Rejected) -> None:
        self.consumed(message)
        self.rejects.append((message, error))

    def skip(self, message: SourceMessage) -> None:
        """A message with no row to store: already stored (replay after a crash) or the check event."""
        self.consumed(message)
        self.skipped.append((message.topic, message.partition, message.offset))

    @property
    def empty(self) -> bool:
        return not self.ranges

    def due(self, policy: FlushPolicy, now: float) -> bool:
        return bool(self.ranges) and (
            len(self.rows) >= policy.max_rows
            or self.size >= policy.max_bytes
            or now - self.created >= policy.max_age_s
        )

    def full(self, policy: FlushPolicy) -> bool:
        return len(self.rows) >= policy.max_rows or self.size >= policy.max_bytes

    def dedup_token(self) -> str:
        """Deterministic token naming exactly these rows: the ranges minus rejected and skipped offsets."""
        digest = hashlib.sha1(usedforsecurity=False)
        for (topic, partition), (first, last) in sorted(self.ranges.items()):
            digest.update(f"{topic}\0{partition}\0{first}\0{last}\n".encode())
        excluded = [(m.topic, m.partition, m.offset) for m, _ in self.rejects] + self.skipped
        for topic, partition, offset in sorted(excluded):
            digest.update(f"-{topic}\0{partition}\0{offset}\n".encode())
        return "sink-" + digest.hexdigest()
