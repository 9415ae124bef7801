"""One load-generator process: an aiohttp client running the open- or closed-loop schedule.

Open loop fires requests at a constant arrival rate regardless of answers and measures latency from
each request's scheduled time, so a stalled server shows up as latency instead of silently lowering
the offered load (coordinated omission). Closed loop keeps N connections busy back to back.
Times come from time.monotonic(): uvloop's loop.time() only has millisecond resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any

import aiohttp
import uvloop
from yarl import URL

from bench.payloads import PROFILES, BenchRequest, PayloadContext
from bench.recorder import Recorder

ProgressFn = Callable[[dict[str, int]], None]


@dataclass(frozen=True)
class LoadConfig:
    """Everything one run needs; picklable so each process gets its own copy."""

    target: str
    profile: str = "single"
    mode: str = "closed"
    rate: float | None = None
    connections: int = 64
    duration_s: float = 10.0
    max_requests: int | None = None
    processes: int = 1
    timeout_s: float = 30.0
    token: str = "phc_bench_token"
    distinct_ids: int = 1000
    batch_size: int | None = None
    event_bytes: int = 1024
    replay_bytes: int = 64 * 1024
    seed: int | None = None
    max_pending: int = 10_000
    acked_log: str | None = None

    def for_process(self, index: int) -> LoadConfig:
        """This process' share of rate, connections and request budget."""
        n = self.processes
        share = {
            "rate": self.rate / n if self.rate else None,
            "connections": max(1, self.connections // n + (index < self.connections % n)),
            "max_requests": (self.max_requests // n + (index < self.max_requests % n))
            if self.max_requests is not None
            else None,
            "seed": None if self.seed is None else self.seed + index,
            "acked_log": f"{self.acked_log}.part{index}" if self.acked_log else None,
        }
        return LoadConfig(**{**asdict(self), **share})


class Worker:
    """Sends requests built by one payload profile and records every outcome."""

    def __init__(self, config: LoadConfig, acked_log: IO[str] | None, progress: ProgressFn) -> None:
        self.config = config
        self.build = PROFILES[config.profile]
        self.ctx = PayloadContext(
            token=config.token,
            distinct_ids=config.distinct_ids,
            batch_size=config.batch_size,
            event_bytes=config.event_bytes,
            replay_bytes=config.replay_bytes,
            rng=random.Random(config.seed),
        )
        self.progress = progress
        self.acked_log = acked_log
        self.urls: dict[str, URL] = {}
        self.issued = 0

    def _url(self, path: str) -> URL:
        url = self.urls.get(path)
        if url is None:
            url = self.urls[path] = URL(self.config.target + path, encoded=True)
        return url

    def _budget_left(self) -> bool:
        return self.config.max_requests is None or self.issued < self.config.max_requests

    async def run(self) -> dict[str, Any]:
        """Run the schedule until the duration or request budget is used up; return the export."""
        cpu_start = time.process_time()
        connector = aiohttp.TCPConnector(limit=self.config.connections, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
        ) as session:
            self.recorder = Recorder(time.monotonic(), self.acked_log)
            self.session = session
            reporter = asyncio.create_task(self._report_progress())
            try:
                if self.config.mode == "open":
                    await self._open_loop()
                else:
                    await self._closed_loop()
            finally:
                reporter.cancel()
        return self.recorder.export(time.process_time() - cpu_start)

    async def _send(self, request: BenchRequest, scheduled: float) -> None:
        try:
            async with self.session.request(
                request.method, self._url(request.path), data=request.body, headers=request.headers
            ) as response:
                await response.read()
                status = str(response.status)
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as exc:
            status = f"error:{type(exc).__name__}"
        self.recorder.record(scheduled, time.monotonic(), status, request.uuids, len(request.body))

    async def _closed_loop(self) -> None:
        end = self.recorder.start + self.config.duration_s

        async def connection() -> None:
            while time.monotonic() < end and self._budget_left():
                self.issued += 1
                request = self.build(self.ctx)
                await self._send(request, time.monotonic())

        await asyncio.gather(*(connection() for _ in range(self.config.connections)))

    async def _open_loop(self) -> None:
        assert self.config.rate, "open loop needs a rate"
        interval = 1.0 / self.config.rate
        start = self.recorder.start
        end = start + self.config.duration_s
        pending: set[asyncio.Task[None]] = set()
        while self._budget_left():
            scheduled = start + self.issued * interval
            if scheduled >= end:
                break
            self.issued += 1
            request = self.build(self.ctx)  # built before its slot so building is not timed
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.recorder.record_lag(-delay)
            if len(pending) >= self.config.max_pending:
                self.recorder.skipped += 1
                continue
            task = asyncio.create_task(self._send(request, scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=self.config.timeout_s + 1)

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.progress(
                {
                    "requests": self.recorder.requests,
                    "ok": self.recorder.statuses.get("200", 0),
                    "events_acked": self.recorder.events_acked,
                }
            )


def run_process(config: LoadConfig, progress: ProgressFn) -> dict[str, Any]:
    """Run one worker on a fresh uvloop event loop; writes this process' acked-log part if asked."""
    with open(config.acked_log, "w") if config.acked_log else contextlib.nullcontext() as acked:
        return uvloop.run(Worker(config, acked, progress).run())
