"""The /metrics exposition: every worker's metrics (or this process's) plus scrape-time collectors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.metrics_multiproc import is_multiprocess

SAMPLE_INTERVAL_S = 1.0


class GaugeSampler:
    """Copies per-worker values into gauges every second: multiprocess gauges cannot be callbacks."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.interval = interval
        self.sources: list[tuple[Gauge, Callable[[], float]]] = []

    def add(self, gauge: Gauge, read: Callable[[], float]) -> None:
        self.sources.append((gauge, read))

    def sample(self) -> None:
        for gauge, read in self.sources:
            gauge.set(read())

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: sample for the app's lifetime."""
        task = asyncio.create_task(self._run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

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
            self.sampler.sample()  # this worker's gauges are exact; the others' at most a second old
        return generate_latest(self.registry)


class _Delegate(Collector):
    """Exposes the process's default registry through this one."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()

    def describe(self) -> Iterable[Metric]:
        return ()
