"""The /metrics exposition: every worker's metrics (or this process's) plus scrape-time collectors."""

from __future__ import annotations

import asyncio
import bisect
import weakref
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.core.background import running
from gateway.metrics.multiproc import is_multiprocess

SAMPLE_INTERVAL_S = 1.0


class LocalCounter:
    """A counter child updated on the hot path as a plain int, folded into it about once a second
    (a prometheus update takes a lock, and in multiprocess mode writes a mmapped file)."""

    __slots__ = ("__weakref__", "target", "value")

    def __init__(self, target: Counter | Gauge) -> None:
        self.target = target
        self.value = 0
        _LOCAL_METRICS.add(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def fold(self) -> None:
        if self.value:
            value, self.value = self.value, 0
            self.target.inc(value)


class LocalGauge(LocalCounter):
    """A gauge moved up and down on the hot path; the net change is folded in like LocalCounter's."""

    __slots__ = ()

    def dec(self, amount: int = 1) -> None:
        self.value -= amount


class LocalHistogram:
    """A histogram child's observations kept in local buckets, folded into it about once a second.

    prometheus-client has no bulk observe: folding adds to the child's bucket and sum values directly
    (`_upper_bounds`, `_buckets`, `_sum`), which is what `observe` itself updates.
    """

    __slots__ = ("__weakref__", "bounds", "counts", "sum", "target")

    def __init__(self, target: Histogram) -> None:
        self.target = target
        self.bounds: list[float] = list(target._upper_bounds)  # ends with +Inf
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        _LOCAL_METRICS.add(self)

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # first bound >= amount, as observe
        self.sum += amount

    def fold(self) -> None:
        counts, total = self.counts, self.sum
        if not any(counts):
            return
        self.counts, self.sum = [0] * len(counts), 0.0
        for bucket, count in zip(self.target._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        self.target._sum.inc(total)


_LOCAL_METRICS: weakref.WeakSet[LocalCounter | LocalHistogram] = weakref.WeakSet()


def fold_local_metrics() -> None:
    """Add what the hot path counted locally to the exported metrics."""
    for metric in list(_LOCAL_METRICS):
        metric.fold()


class GaugeSampler:
    """Copies per-worker values into gauges every second (multiprocess gauges cannot be callbacks), and
    folds the hot path's local counters and histograms into their metrics."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.sources: list[tuple[Gauge, Callable[[], float]]] = []

    def add(self, gauge: Gauge, read: Callable[[], float]) -> None:
        self.sources.append((gauge, read))

    def sample(self) -> None:
        fold_local_metrics()
        for gauge, read in self.sources:
            gauge.set(read())

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: sample for the app's lifetime."""
        async with running(self._run()):
            yield

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)


class MetricsExporter:
    """Renders the Prometheus text format for /metrics."""

    def __init__(self, collectors: Iterable[Collector] = (), sampler: GaugeSampler | None = None) -> None:
        self.sampler = sampler
        self.registry = CollectorRegistry()
        if is_multiprocess():
            MultiProcessCollector(self.registry)
        else:
            self.registry.register(_Delegate(REGISTRY))
        for collector in collectors:
            self.registry.register(collector)

    def render(self) -> bytes:
        if self.sampler is not None:
            self.sampler.sample()  # this worker's figures are exact; the others' at most a second old
        return generate_latest(self.registry)


class _Delegate(Collector):
    """Exposes the process's default registry through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()

    def describe(self) -> Iterable[Metric]:
        return ()
