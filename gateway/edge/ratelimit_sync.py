"""Shares rate-limit counts between replicas through Redis without a round trip per request.

Every `interval` seconds one pipeline sends each window's locally allowed hits (`INCRBY` on an
epoch-aligned key per window, limit and client) and reads back the cluster-wide totals, which the
windows then count in. Decisions stay local and immediate; a client spreading requests over replicas
is caught within one interval. If Redis fails, the others' counts are forgotten and each replica
enforces its local limits alone (fail open), counted in `gateway_rate_limit_sync_errors_total`.
"""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.edge.ratelimit import SlidingWindow
from gateway.metrics import serve as metrics

log = logging.getLogger("gateway.edge.ratelimit")
KEY_PREFIX = "gateway:rl:"


class RedisRateSync:
    """Background task pairing local `SlidingWindow`s with Redis counters."""

    def __init__(self, url: str, windows: list[SlidingWindow], interval: float, timeout: float = 0.5) -> None:
        self.windows = windows
        self.interval = interval
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.healthy = True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sync_once()

    async def sync_once(self) -> None:
        sent: list[tuple[SlidingWindow, int, str]] = []
        pipe = self.client.pipeline(transaction=False)
        for window in self.windows:
            ttl = math.ceil(2 * window.period) + 1
            for index, counts in window.take_pending():
                for key, count in counts.items():
                    name = f"{KEY_PREFIX}{window.name}:{index}:{key}"
                    pipe.incrby(name, count)
                    pipe.expire(name, ttl)
                    sent.append((window, index, key))
        if not sent:
            return
        try:
            results = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        if not self.healthy:
            log.warning("rate-limit storage reachable again: limits are shared again")
            self.healthy = True
        for (window, index, key), total in zip(sent, results[::2], strict=True):
            window.merge_shared(index, key, int(total))

    def _failed(self, exc: Exception) -> None:
        metrics.RATE_LIMIT_SYNC_ERRORS.inc()
        for window in self.windows:
            window.forget_shared()
        if self.healthy:
            log.warning("rate-limit storage unreachable (%s): failing open to per-replica limits", exc)
            self.healthy = False

    async def close(self) -> None:
        await self.client.aclose()
