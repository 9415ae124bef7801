"""Spool gauges read from disk at scrape time: correct across workers without any per-write cost.

Every `worker-N` spool under the data directory is measured (file sizes and cursor files only, no
record is read), so one scrape of any worker reports every spool, adopted orphans included.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway.spool.reader import cursor_mtime, lag_bytes, load_cursors
from gateway.spool.segment import segment_sizes


class SpoolCollector(Collector):
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        used, limit, segments, lag, idle = families = self._families()
        now = time.time()
        for directory in sorted(self.root.glob("worker-*")):
            sizes = segment_sizes(directory)
            spool = directory.name
            used.add_metric([spool], sum(sizes.values()))
            limit.add_metric([spool], self.max_bytes)
            segments.add_metric([spool], len(sizes))
            for reader, position in sorted(load_cursors(directory).items()):
                lag.add_metric([spool, reader], lag_bytes(directory, position))
                committed = cursor_mtime(directory, reader)
                if committed is not None:
                    idle.add_metric([spool, reader], max(0.0, now - committed))
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("gateway_spool_bytes", "Segment bytes on disk, per worker spool", labels=["spool"]),
            GaugeMetricFamily(
                "gateway_spool_max_bytes", "Spool size bound (--spool-max-bytes); full → 503", labels=["spool"]
            ),
            GaugeMetricFamily("gateway_spool_segments", "Segment files, per worker spool", labels=["spool"]),
            GaugeMetricFamily(
                "gateway_spool_reader_lag_bytes",
                "Spooled bytes a reader (kafka = replay into Kafka) has not consumed yet",
                labels=["spool", "reader"],
            ),
            GaugeMetricFamily(
                "gateway_spool_reader_idle_seconds",
                "Seconds since a reader last committed progress (with lag > 0: replay stalled)",
                labels=["spool", "reader"],
            ),
        ]
