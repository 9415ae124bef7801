"""Embedded mode (the local spool is the sink): say when nothing drains the spool, before it fills up.

Events stay in `<data-dir>/spool/worker-N` until `gateway sink --data-dir <data-dir>` moves them on;
without it the spool only grows, and once it reaches --spool-max-bytes every capture request is
answered 503. A user otherwise meets those 503s with no hint why, so the gateway warns at start when
no sink is attached, and whenever a spool passes FILL_WARNING of its bound (rate limited).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from gateway.core.background import running
from gateway.spool import Spool
from gateway.spool.locks import is_locked
from gateway.spool.reader import CURSOR_PREFIX
from gateway.spool.segment import segment_sizes

FILL_WARNING = 0.8
CHECK_INTERVAL_S = 1.0
REPEAT_S = 300.0

log = logging.getLogger("gateway.embedded")


def sink_command(data_dir: Path) -> str:
    return f"gateway sink --data-dir {data_dir}"


def reader_attached(spool_dir: Path) -> bool:
    """True while some reader (`gateway sink`) holds a cursor lock in this worker spool."""
    return any(is_locked(lock) for lock in spool_dir.glob(f"{CURSOR_PREFIX}*.lock"))


def warn_if_not_drained(data_dir: Path, spool_root: Path, max_bytes: int) -> None:
    """At start: a warning naming the command that drains the spool, unless one is running."""
    if not any(reader_attached(directory) for directory in spool_root.glob("worker-*")):
        log.warning(
            "embedded mode: events are kept in the spool under %s and nothing drains it; run `%s` to move "
            "them into ClickHouse, or capture answers 503 once a worker's spool reaches --spool-max-bytes "
            "(%d bytes)", spool_root, sink_command(data_dir), max_bytes,
            extra={"spool": str(spool_root), "command": sink_command(data_dir)},
        )


class SpoolFillWatch:
    """Warns (at most every REPEAT_S) while the worker's spool is over FILL_WARNING of its bound."""

    def __init__(self, spool: Spool, data_dir: Path, interval: float = CHECK_INTERVAL_S) -> None:
        self.spool = spool
        self.data_dir = data_dir
        self.interval = interval

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: watch for the app's lifetime."""
        async with running(self._run()):
            yield

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        warned_at = -REPEAT_S
        threshold = self.spool.max_bytes * FILL_WARNING
        while True:
            await asyncio.sleep(self.interval)
            # used_bytes is kept in memory but only shrinks when re-measured: confirm on disk.
            if self.spool.used_bytes < threshold or loop.time() - warned_at < REPEAT_S:
                continue
            used = await asyncio.to_thread(self._measure)
            if used < threshold:
                continue
            warned_at = loop.time()
            directory = self.spool.directory
            if reader_attached(directory):
                hint = "`gateway sink` is draining it, but not fast enough"
            else:
                hint = f"nothing drains it: run `{sink_command(self.data_dir)}`"
            log.warning(
                "spool %s is %d%% full (%d of %d bytes); %s. Capture answers 503 once it is full",
                directory, 100 * used // self.spool.max_bytes, used, self.spool.max_bytes, hint,
                extra={"spool": str(directory), "used_bytes": used, "max_bytes": self.spool.max_bytes},
            )

    def _measure(self) -> int:
        return sum(segment_sizes(self.spool.directory).values())
