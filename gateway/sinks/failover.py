"""Deliver to a remote (Kafka, an upstream PostHog) with spool failover; 200 means the remote acked or
the records are fsynced locally.

Two modes:
- DIRECT: records go to the remote; a request waits for its ack up to `ack_timeout`. A failure or a
  timeout sends that request's records to the spool instead and switches to SPOOLING.
- SPOOLING: every record goes to the spool, so per-key order is kept while the remote is away; a
  background replayer drains the spool into the remote in order and switches back to DIRECT once it
  has caught up (holding new requests while it replays what was spooled during its last read, so
  no record is overtaken by a later one of its key sent direct). Records are delivered at least
  once (a timed-out send may still land; consumers dedupe by uuid).
The replayer also drains spools left by a previous run (and, with fewer workers now, the spools of
workers that no longer exist), so nothing acknowledged is ever stranded on disk.

A remote may refuse records for good (`Rejected`, e.g. an upstream's 400): a request sees that error
in DIRECT mode; the replayer drops and counts them, since retrying can never succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import NamedTuple, Protocol

from prometheus_client import Counter, Gauge

from gateway.core.errors import GatewayError
from gateway.core.readiness import Readiness
from gateway.core.record import Record
from gateway.metrics import serve as gateway_metrics
from gateway.sinks.spool import SpoolSink
from gateway.spool import SpoolLocked, SpoolReader
from gateway.spool.crypto import Keyring, SpoolKeyError

log = logging.getLogger("gateway.failover")

REPLAY_BATCH_RECORDS = 5_000
REPLAY_BATCH_BYTES = 8 * 1024 * 1024
IDLE_POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 10.0
KEY_ERROR_RETRY_SECONDS = 60.0


class Mode(Enum):
    DIRECT = "direct"
    SPOOLING = "spooling"


class Rejected(GatewayError):
    """The remote refused records for good (its 4xx); `status` is what the client is answered."""

    code = "upstream_rejected"

    def __init__(self, message: str, status: int, dropped: int) -> None:
        super().__init__(message)
        self.status = status
        self.dropped = dropped


class Remote(Protocol):
    """Where a FailoverSink delivers: `produce` returns once every record is acknowledged, or raises."""

    async def ping(self) -> bool: ...

    async def produce(self, records: Sequence[Record]) -> None: ...

    async def produce_bulk(self, records: Sequence[Record]) -> None:
        """`produce` for one large batch from the replayer (may trade latency for throughput)."""

    generation: int  # bumped whenever the remote retires a broken client

    def reset(self, generation: int) -> None:
        """Retire the client in use since `generation`, if it is still the current one."""

    async def stop(self) -> None: ...


class FailoverMetrics(NamedTuple):
    spooling: Gauge
    spooled: Counter
    replayed: Counter


class FailoverSink:
    def __init__(
        self,
        remote: Remote,
        spool: SpoolSink,
        *,
        name: str,
        ack_timeout: float,
        metrics: FailoverMetrics,
        adopt: Sequence[Path] = (),
    ) -> None:
        self.remote = remote
        self.spool = spool
        self.keyring = spool.spool.keyring  # the replayers read with the keys the spool writes with
        self.name = name  # in logs, readiness and the spool cursor's name
        self.ack_timeout = ack_timeout
        self.metrics = metrics
        self._rejected = gateway_metrics.EVENTS_DROPPED.labels(f"rejected_by_{name}")
        self.mode = Mode.DIRECT
        self._adopt = list(adopt)
        self._spool_appends = 0  # appends under way
        self._spool_settled = 0  # appends finished (written or failed) since start
        self._held: asyncio.Event | None = None  # set while requests wait for the switch back to DIRECT
        self._hold_expiry: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    async def start(self) -> None:
        await self.spool.start()
        try:
            problem = "" if await asyncio.wait_for(self.remote.ping(), self.ack_timeout) else "health check failed"
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
        if problem:  # remote down (or unhealthy) at boot: serve from the spool until the replayer finds it back
            log.warning("%s unavailable at start (%s); spooling", self.name, problem)
            self._set_mode(Mode.SPOOLING)
        directory = self.spool.spool.directory
        if await asyncio.to_thread(self._has_backlog, directory):
            self._set_mode(Mode.SPOOLING)
        self._tasks = [asyncio.create_task(self._replay_forever(directory, own=True))]
        self._tasks += [asyncio.create_task(self._replay_forever(d, own=False)) for d in self._adopt]

    async def deliver(self, records: Sequence[Record]) -> None:
        held = self._held
        if held is not None:  # the replayer is switching back to DIRECT: the spool's tail goes first
            await held.wait()
        if self.mode is Mode.DIRECT:
            generation = self.remote.generation
            try:
                await self._produce(records)
                return
            except Rejected as rejected:
                self._rejected.inc(rejected.dropped)
                raise
            except Exception as exc:
                log.warning("%s delivery failed (%s: %s); spooling", self.name, type(exc).__name__, exc)
                self.remote.reset(generation)
                self._set_mode(Mode.SPOOLING)
        await self._to_spool(records)

    async def _produce(self, records: Sequence[Record]) -> None:
        """Deliver to the remote within `ack_timeout` (TimeoutError after it)."""
        async with asyncio.timeout(self.ack_timeout):  # no task per request, unlike wait_for
            await self.remote.produce(records)

    async def _to_spool(self, records: Sequence[Record]) -> None:
        self._spool_appends += 1
        try:
            await self.spool.deliver(records)
        finally:
            self._spool_appends -= 1
            self._spool_settled += 1
            self._wake.set()
        self.metrics.spooled.inc(len(records))

    def _set_mode(self, mode: Mode) -> None:
        if mode is not self.mode:
            log.info("%s sink mode: %s", self.name, mode.value)
        self.mode = mode
        self.metrics.spooling.set(1 if mode is Mode.SPOOLING else 0)
        self._wake.set()

    async def _replay_forever(self, directory: Path, own: bool) -> None:
        """Drain `directory` into the remote; for our own spool also decide when to go back to DIRECT."""
        while True:
            try:
                reader = await _open_reader(directory, self.name, self.keyring)
                break
            except SpoolLocked:
                log.info("spool %s is replayed by another process", directory)
                return
            except OSError as exc:  # e.g. disk full while writing the cursor lock: try again, never give up
                log.error("cannot open spool %s for %s: %s", directory, self.name, exc)
                await self._sleep(MAX_BACKOFF_SECONDS)
                if self._closing:
                    return
        backoff = 0.5
        try:
            while not self._closing:
                settled = self._spool_settled  # what an empty read below has seen all of
                try:
                    batch = await asyncio.to_thread(reader.read_batch, REPLAY_BATCH_RECORDS, REPLAY_BATCH_BYTES)
                except SpoolKeyError as exc:  # loud, and the records stay on disk: restart with the key
                    log.error("cannot replay spool %s to %s: %s", directory, self.name, exc)
                    await self._sleep(KEY_ERROR_RETRY_SECONDS)
                    continue
                except OSError as exc:  # e.g. EIO: the records stay on disk, try again
                    log.error("cannot read spool %s for %s: %s", directory, self.name, exc)
                    await self._sleep(MAX_BACKOFF_SECONDS)
                    continue
                if batch.records:
                    try:
                        await asyncio.wait_for(self.remote.produce_bulk(batch.records), max(self.ack_timeout, 30))
                    except Rejected as rejected:
                        log.error("%s refused %d spooled records for good: %s", self.name, rejected.dropped,
                                  rejected.message)
                        self._rejected.inc(rejected.dropped)
                    except Exception as exc:
                        self._release()  # held requests spool: the remote is not back after all
                        log.warning("spool replay to %s failed (%s); retrying in %.1fs", self.name, exc, backoff)
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                        reader = await asyncio.to_thread(_rewind, reader)
                        continue
                    backoff = 0.5
                    try:
                        await asyncio.to_thread(reader.commit, batch)
                    except OSError as exc:  # e.g. disk full: the batch is replayed again (at least once)
                        log.error("cannot commit the %s cursor of spool %s: %s", self.name, directory, exc)
                        await self._sleep(MAX_BACKOFF_SECONDS)
                        reader = await asyncio.to_thread(_rewind, reader)
                        continue
                    if own:
                        await self.spool.spool.remeasure()
                    self.metrics.replayed.inc(len(batch.records))
                    continue
                if own and self.mode is Mode.SPOOLING:
                    if self._held is None:
                        if await self._reachable():
                            self._hold()
                            continue  # read again: what was spooled meanwhile is replayed first
                    elif self._spool_appends == 0 and self._spool_settled == settled:
                        self._set_mode(Mode.DIRECT)  # nothing acknowledged is left unreplayed
                        self._release()
                    elif self._spool_appends == 0:
                        continue  # appended during that read: read again
                    else:
                        await self._sleep(self.ack_timeout)  # until the appends under way finish
                        continue
                if not own:
                    log.info("adopted spool %s fully replayed", directory)
                    return
                await self._sleep(IDLE_POLL_SECONDS if self.mode is Mode.DIRECT else backoff)
        finally:
            await asyncio.to_thread(reader.close)

    async def _reachable(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.remote.ping(), self.ack_timeout))
        except Exception:
            return False

    def _hold(self) -> None:
        """Caught up with our spool and the remote is back: hold new requests (at most `ack_timeout`)
        until what was spooled meanwhile is replayed too, then they go DIRECT. Going DIRECT at once
        would let a record acknowledged from the spool during the last read be overtaken by the next
        one of its key, sent direct by a client that got its 200."""
        held = self._held = asyncio.Event()
        self._hold_expiry = asyncio.get_running_loop().call_later(self.ack_timeout, self._release, held)

    def _release(self, held: asyncio.Event | None = None) -> None:
        """Let held requests go on: DIRECT if the replayer switched, else to the spool."""
        current = self._held
        if current is None or (held is not None and held is not current):
            return
        self._held = None
        current.set()
        if self._hold_expiry is not None:
            self._hold_expiry.cancel()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def close(self) -> None:
        self._closing = True
        self._release()
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.remote.stop(), 10)
        await self.spool.close()

    def readiness(self) -> Readiness:
        spool = self.spool.readiness()
        if not spool.ready:
            return spool
        if self.mode is Mode.SPOOLING:
            return Readiness(ready=True, degraded=True,
                             detail=f"spooling: {self.name} unavailable or catching up")
        return Readiness(ready=True, degraded=False, detail=self.name)

    def _has_backlog(self, directory: Path) -> bool:
        with SpoolReader(directory, self.name, self.keyring) as reader:
            return reader.lag() > 0


def _rewind(reader: SpoolReader) -> SpoolReader:
    """Re-open the reader at its committed cursor so a failed batch is read again."""
    reader.close()
    return SpoolReader(reader.directory, reader.name, reader.keyring)


async def _open_reader(directory: Path, name: str, keyring: Keyring | None) -> SpoolReader:
    """Open a reader in a thread. Cancelled meanwhile (close()), the thread still finishes opening: close
    that reader before giving up, or its cursor lock would stay held until garbage collection."""
    opening = asyncio.ensure_future(asyncio.to_thread(SpoolReader, directory, name, keyring))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            (await opening).close()
        raise
