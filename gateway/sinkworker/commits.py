"""Which offsets are safe to commit: those of the longest prefix of finished batches.

Inserts run concurrently and may finish out of order; a partition's offset only advances past a
batch once every earlier batch has been stored too.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.sinkworker.batch import Batch, TopicPartition


class CommitTracker:
    """Batches in submission order; `done()` yields the newly committable next-offsets."""

    def __init__(self) -> None:
        self._pending: deque[Batch] = deque()
        self._finished: set[int] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def submitted(self, batch: Batch) -> None:
        self._pending.append(batch)
        self._idle.clear()

    def done(self, batch: Batch) -> dict[TopicPartition, int]:
        """Mark a batch stored; return {tp: next offset to consume} that may now be committed."""
        self._finished.add(batch.seq)
        ready: dict[TopicPartition, int] = {}
        while self._pending and self._pending[0].seq in self._finished:
            head = self._pending.popleft()
            self._finished.discard(head.seq)
            for tp, (_, last) in head.ranges.items():
                ready[tp] = last + 1
        if not self._pending:
            self._idle.set()
        return ready

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def abandon(self) -> None:
        """Forget the batches still in flight (their store tasks were cancelled): nothing of them, nor of
        any batch after them, is committed, and waiting for idle returns."""
        self._pending.clear()
        self._finished.clear()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until every submitted batch is stored."""
        await self._idle.wait()
