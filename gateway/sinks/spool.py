"""The embedded default sink: records are acknowledged once they are durable in the local spool.

Every spool failure (full, disk full, I/O error, closing) is a 503 + Retry-After, counted by spool
kind and reason in gateway_spool_errors_total: the client retries, nothing is acknowledged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from gateway.core.errors import ServiceUnavailable
from gateway.core.readiness import Readiness
from gateway.core.record import Record
from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.metrics import serve as metrics
from gateway.spool import FsyncPolicy, Spool, SpoolError, SpoolLocked, layout
from gateway.spool.crypto import Keyring, SpoolKeyError
from gateway.spool.locks import WRITE_LOCK

# Browsers (posthog-js) and posthog-python honour Retry-After up to 30 s.
SPOOL_RETRY_AFTER = 30
# What the client is told, by SpoolError.reason (never the path or the OS message).
_MESSAGES = {
    "full": "local spool is full",
    "no_space": "local spool: no space left on the device",
    "read_only": "local spool: the file system is read-only",
    "closed": "local spool is closed (shutting down)",
}
MAX_SEGMENT_BYTES = 64 * 1024 * 1024
# Several segments per spool, so replayed ones can be deleted while the newest one is still active.
SEGMENTS_PER_SPOOL = 8
# Readiness fails a little before the spool is full, so load balancers move traffic before 503s start.
READY_HEADROOM = 0.05


class SpoolSink:
    def __init__(self, spool: Spool, kind: str = layout.MAIN) -> None:
        self.spool = spool
        self.kind = kind  # gateway/spool/layout.py: main or upstream

    @classmethod
    def at(
        cls, directory: Path, *, fsync: str, fsync_window_ms: float, max_bytes: int, keyring: Keyring | None,
        kind: str = layout.MAIN,
    ) -> SpoolSink:
        segment_bytes = min(MAX_SEGMENT_BYTES, max_bytes // SEGMENTS_PER_SPOOL)
        spool = Spool(directory, fsync=FsyncPolicy(fsync), fsync_window_ms=fsync_window_ms, max_bytes=max_bytes,
                      segment_bytes=segment_bytes, keyring=keyring)
        return cls(spool, kind)

    async def start(self) -> None:
        """Open the spool; a spool that cannot be opened stops the start-up (StartupError)."""
        directory = self.spool.directory
        try:
            await self.spool.open()
        except SpoolLocked as exc:
            holder = _lock_holder(directory)
            raise StartupError(
                "spool", directory,
                f"locked by another process (pid {holder}); is another gateway running with this --data-dir?",
            ) from exc
        except SpoolKeyError as exc:  # --spool-encryption-key-file lacks a key the spool needs
            raise StartupError("spool", directory, str(exc), exit_code=CONFIG_EXIT) from exc
        except SpoolError as exc:
            raise StartupError("spool", directory, str(exc)) from exc
        except OSError as exc:
            raise StartupError("spool", directory, f"cannot be opened: {exc.strerror or exc}") from exc

    async def deliver(self, records: Sequence[Record]) -> None:
        try:
            await self.spool.append(records)
        except SpoolError as exc:
            self._unavailable(exc)

    async def deliver_request(self, content: bytes, records: int) -> None:
        """Like `deliver` for a whole capture request of `records` records (gateway/capture/spooled.py):
        one frame; readers of the spool get the records."""
        try:
            await self.spool.append_request(content, records)
        except SpoolError as exc:
            self._unavailable(exc)

    def _unavailable(self, exc: SpoolError) -> NoReturn:
        metrics.SPOOL_ERRORS.labels(self.kind, exc.reason).inc()
        message = _MESSAGES.get(exc.reason, "local spool: write failed")
        raise ServiceUnavailable(message, retry_after=SPOOL_RETRY_AFTER) from exc

    async def close(self) -> None:
        await self.spool.close()

    def readiness(self) -> Readiness:
        if self.spool.used_bytes >= self.spool.max_bytes * (1 - READY_HEADROOM):
            return Readiness(ready=False, degraded=True, detail="spool full")
        return Readiness(ready=True, degraded=False, detail="spool")


def _lock_holder(directory: Path) -> str:
    """The pid the holder of the spool's write lock wrote into it (gateway/spool/locks.py)."""
    with contextlib.suppress(OSError):
        return (directory / WRITE_LOCK).read_text().strip() or "unknown"
    return "unknown"
