"""Spool gauges read from disk at scrape time: correct across workers without any per-write cost.

Every spool of the data directory (every kind and worker, see `layout.py`) is measured (file sizes
and cursor files only, no record is read), so one scrape of any worker reports every spool, adopted
orphans included. Labels: `kind` (main, upstream) and `spool` (worker-N).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway.metrics.serve import spool_gauges
from gateway.spool.layout import spools
from gateway.spool.reader import cursor_mtime, lag_bytes, load_cursors
from gateway.spool.segment import segment_sizes


class SpoolCollector(Collector):
    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.data_dir = Path(data_dir)
        self.max_bytes = max_bytes

    def describe(self) -> Iterable[Metric]:
        return spool_gauges()

    def collect(self) -> Iterable[Metric]:
        used, limit, segments, lag, idle = families = spool_gauges()
        now = time.time()
        for spool, directory in spools(self.data_dir):
            labels = [spool.kind, directory.name]
            sizes = segment_sizes(directory)
            used.add_metric(labels, sum(sizes.values()))
            limit.add_metric(labels, self.max_bytes)
            segments.add_metric(labels, len(sizes))
            for reader, position in sorted(load_cursors(directory).items()):
                lag.add_metric([*labels, reader], lag_bytes(directory, position))
                committed = cursor_mtime(directory, reader)
                if committed is not None:
                    idle.add_metric([*labels, reader], max(0.0, now - committed))
        return families
