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
from itertools import repeat
from typing import NamedTuple

from gateway.sinkworker.frames import SpooledFrame, first_offset
from gateway.sinkworker.rows import Elsewhere, Rejected, SourceMessage

TopicPartition = tuple[str, int]
_new_tuple = tuple.__new__  # Coordinates without NamedTuple's Python-level __new__ (one per row)


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
    records: int = 0  # records beyond one per message (a SpooledFrame holds a request's records)

    def add_run(
        self,
        run: Sequence[SourceMessage],
        encode: Callable[[SourceMessage], bytes | None],
        stored: Container[int] = (),
        frame_rows: Callable[[SpooledFrame], list[bytes] | None] | None = None,
    ) -> tuple[int, int]:
        """Encode a run of consecutive messages of one partition into rows and rejects, skipping offsets
        in `stored` (rows already in the table: replay after a crash), check events (encoded as
        None) and other sinks' messages (`Elsewhere`, counted in `elsewhere`); returns how many
        replayed and check messages were skipped. A spooled request read whole (`SpooledFrame`) gives
        its rows by `frame_rows`, or else its events are encoded one by one."""
        tp = (run[0].topic, run[0].partition)
        first = self.ranges[tp][0] if tp in self.ranges else first_offset(run[0])
        count = len(self.rows)
        replayed, checks = self._add(run, encode, stored, frame_rows)
        self.size += sum(map(len, self.rows[count:]))
        self.ranges[tp] = (first, run[-1].offset)
        return replayed, checks

    def _add(
        self,
        run: Sequence[SourceMessage],
        encode: Callable[[SourceMessage], bytes | None],
        stored: Container[int],
        frame_rows: Callable[[SpooledFrame], list[bytes] | None] | None,
    ) -> tuple[int, int]:
        rows, kept, rejects, skipped = self.rows, self.sources, self.rejects, self.skipped
        replayed = checks = 0
        for message in run:
            if type(message) is SpooledFrame:
                frame: SpooledFrame = message
                self.records += frame.count - 1
                made = None
                if frame_rows is not None and not (stored and any(o in stored for o in frame.positions())):
                    made = frame_rows(frame)
                if made is None:
                    more_replayed, more_checks = self._add(frame.events_placed(), encode, stored, None)
                    replayed, checks = replayed + more_replayed, checks + more_checks
                    continue
                rows += made
                kept += _sources(frame)
                continue
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
        return replayed, checks

    @property
    def empty(self) -> bool:
        return not self.ranges

    def due(self, policy: FlushPolicy, now: float, backlog: bool = False) -> bool:
        """Full, or old unless the source has a backlog (which fills it soon)."""
        return bool(self.ranges) and (
            len(self.rows) >= policy.max_rows
            or self.size >= policy.max_bytes
            or (not backlog and now - self.created >= policy.max_age_s)
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


def _sources(frame: SpooledFrame) -> map[Coordinates]:
    """The coordinates of a frame's rows, built in C (no Python call per row)."""
    count = frame.count
    places = zip(repeat(frame.topic, count), repeat(frame.partition, count), frame.positions(),
                 repeat(frame.timestamp, count), strict=True)  # fmt: skip
    return map(_new_tuple, repeat(Coordinates, count), places)
