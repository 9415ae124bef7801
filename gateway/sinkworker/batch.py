"""Accumulating consumed messages into insert batches, and when to flush them.

Messages arrive in runs of consecutive offsets of one partition; the batch keeps the bookkeeping per
run, not per message. It remembers, per (topic, partition), the contiguous offset range it consumed
(rows, rejects and skipped alike), so committing after the batch is stored is exact, and its deduplication token is
derived from that range plus the rows actually included: retrying the same batch reuses the
token, a different content never does. Once encoded, a message's value is dropped: a batch keeps its
rows and, per row, only the message's coordinates (what commits, replay checks, lag and a refetch
for the dead-letter queue need), so its memory is about its rows' bytes (`--batch-bytes`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.sinkworker.rows import Elsewhere, Rejected, SourceMessage

TopicPartition = tuple[str, int]


class Coordinates(NamedTuple):
    """Where a row's message is in its source, and when it was written there (epoch ms)."""

    topic: str
    partition: int
    offset: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """Flush when any limit is reached."""

    max_rows: int = 100_000
    max_bytes: int = 32 * 1024 * 1024
    max_age_s: float = 1.0


@dataclass(slots=True)
class Batch:
    """Encoded rows (with their messages' coordinates) and rejects awaiting one insert."""

    seq: int
    created: float = field(default_factory=time.monotonic)
    rows: list[bytes] = field(default_factory=list)
    sources: list[Coordinates] = field(default_factory=list)
    rejects: list[tuple[SourceMessage, Rejected]] = field(default_factory=list)
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    skipped: list[tuple[str, int, int]] = field(default_factory=list)
    size: int = 0
    elsewhere: int = 0  # messages skipped as not for the events table (`Elsewhere`)

    def add_run(
        self,
        run: Sequence[SourceMessage],
        encode: Callable[[SourceMessage], bytes | None],
        stored: Container[int] = (),
    ) -> tuple[int, int]:
        """Encode a run of consecutive messages of one partition into rows and rejects, skipping offsets
        in `stored` (rows already in the table: replay after a crash), check events (encoded as
        None) and other sinks' messages (`Elsewhere`, counted in `elsewhere`); returns how many
        replayed and check messages were skipped."""
        rows, kept, rejects, skipped = self.rows, self.sources, self.rejects, self.skipped
        count = len(rows)
        replayed = checks = 0
        for message in run:
            if stored and message.offset in stored:
                skipped.append((message.topic, message.partition, message.offset))
                replayed += 1
                continue
            try:
                row = encode(message)
            except Rejected as error:
                rejects.append((message, error))
                continue
            except Elsewhere:
                skipped.append((message.topic, message.partition, message.offset))
                self.elsewhere += 1
                continue
            if row is None:
                skipped.append((message.topic, message.partition, message.offset))
                checks += 1
                continue
            rows.append(row)
            kept.append(Coordinates(message.topic, message.partition, message.offset, message.timestamp))
        self.size += sum(map(len, rows[count:]))
        tp = (run[0].topic, run[0].partition)
        first, _ = self.ranges.get(tp, (run[0].offset, 0))
        self.ranges[tp] = (first, run[-1].offset)
        return replayed, checks

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
