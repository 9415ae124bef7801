"""Consumer lag as operators alert on it: a partition's end offset minus its committed offset.

A sink commits only past what it stored, so messages consumed but not stored (storage down) still
count. Each source feeds it what it learns: where a partition's reading started (the committed offset
when it was assigned), end offsets, its commits, and the partitions it lost (another member reports
them now, so their series go).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Gauge

from gateway.sinkworker.batch import TopicPartition as TP


class PartitionLag:
    """Per assigned partition, its end offset and committed offset; `gauge` gets each lag under `labels(tp)`."""

    def __init__(self, gauge: Gauge, labels: Callable[[TP], tuple[str, ...]]) -> None:
        self._gauge = gauge
        self._labels = labels
        self._ends: dict[TP, int] = {}  # end offset (high watermark) last seen
        self._committed: dict[TP, int] = {}  # next offset after what is stored and committed

    def __contains__(self, tp: TP) -> bool:
        return tp in self._committed

    def started(self, tp: TP, offset: int) -> None:
        """The first offset read since the partition was assigned: its committed offset."""
        self._committed.setdefault(tp, offset)

    def ended(self, tp: TP, end: int) -> None:
        self._ends[tp] = end
        self._report(tp)

    def committed(self, offsets: Mapping[TP, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._committed:  # still assigned
                self._committed[tp] = max(offset, self._committed[tp])
                self._report(tp)

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self._ends.pop(tp, None)
            self._committed.pop(tp, None)
            with contextlib.suppress(KeyError):
                self._gauge.remove(*self._labels(tp))

    def partitions(self) -> list[TP]:
        """The partitions whose end offset is known."""
        return list(self._ends)

    def total(self) -> int:
        return sum(self._of(tp) for tp in list(self._ends))

    def _of(self, tp: TP) -> int:
        end = self._ends.get(tp)
        return 0 if end is None else max(0, end - self._committed.get(tp, end))

    def _report(self, tp: TP) -> None:
        self._gauge.labels(*self._labels(tp)).set(self._of(tp))
