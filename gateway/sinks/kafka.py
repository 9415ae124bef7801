"""Kafka sink with spool failover: 200 means Kafka acked (acks=all) or the records are fsynced locally.

Two modes:
- DIRECT: records go to Kafka; a request waits for the ack up to `ack_timeout`. A failure or a
  timeout sends that request's records to the spool instead and switches to SPOOLING.
- SPOOLING: every record goes to the spool, so per-key order is kept while Kafka is away; a
  background replayer drains the spool into Kafka in order and switches back to DIRECT once it has
  caught up. Records are delivered at least once (a timed-out send may still land; consumers dedupe
  by uuid).
The replayer also drains spools left by a previous run (and, with fewer workers now, the spools of
workers that no longer exist), so nothing acknowledged is ever stranded on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from gateway import metrics
from gateway.capture.errors import PayloadTooLarge
from gateway.capture.record import Record
from gateway.sinks.base import Readiness
from gateway.sinks.kafka_producer import ReconnectingProducer
from gateway.sinks.spool import SpoolSink
from gateway.spool import SpoolLocked, SpoolReader

log = logging.getLogger("gateway.kafka")

REPLAY_READER = "kafka"
REPLAY_BATCH_RECORDS = 5_000
REPLAY_BATCH_BYTES = 8 * 1024 * 1024
IDLE_POLL_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 10.0


class Mode(Enum):
    DIRECT = "direct"
    SPOOLING = "spooling"


class KafkaSink:
    def __init__(
        self,
        producer: ReconnectingProducer,
        spool: SpoolSink,
        ack_timeout: float,
        max_record_bytes: int,
        adopt: Sequence[Path] = (),
    ) -> None:
        self.producer = producer
        self.max_record_bytes = max_record_bytes
        self.spool = spool
        self.ack_timeout = ack_timeout
        self.mode = Mode.DIRECT
        self._adopt = list(adopt)
        self._spool_appends = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    async def start(self) -> None:
        await self.spool.start()
        try:
            await asyncio.wait_for(self.producer.ping(), self.ack_timeout)
        except Exception as exc:  # Kafka down at boot: serve from the spool until it is back
            log.warning("Kafka unavailable at start (%s); spooling", exc)
            self._set_mode(Mode.SPOOLING)
        directory = self.spool.spool.directory
        if await asyncio.to_thread(_has_backlog, directory):
            self._set_mode(Mode.SPOOLING)
        self._tasks = [asyncio.create_task(self._replay_forever(directory, own=True))]
        self._tasks += [asyncio.create_task(self._replay_forever(d, own=False)) for d in self._adopt]

    async def deliver(self, records: Sequence[Record]) -> None:
        for record in records:
            if len(record.value) + len(record.key or b"") > self.max_record_bytes:
                raise PayloadTooLarge(
                    f"a record exceeds Kafka's batch limit of {self.max_record_bytes} bytes"
                )
        if self.mode is Mode.DIRECT:
            try:
                await asyncio.wait_for(self.producer.produce(records), self.ack_timeout)
                return
            except Exception as exc:
                log.warning("Kafka produce failed (%s: %s); spooling", type(exc).__name__, exc)
                self.producer.reset()
                self._set_mode(Mode.SPOOLING)
        await self._to_spool(records)

    async def _to_spool(self, records: Sequence[Record]) -> None:
        self._spool_appends += 1
        try:
            await self.spool.deliver(records)
        finally:
            self._spool_appends -= 1
        metrics.SPOOLED_RECORDS.inc(len(records))
        self._wake.set()

    def _set_mode(self, mode: Mode) -> None:
        if mode is not self.mode:
            log.info("Kafka sink mode: %s", mode.value)
        self.mode = mode
        metrics.KAFKA_SPOOLING.set(1 if mode is Mode.SPOOLING else 0)
        self._wake.set()

    async def _replay_forever(self, directory: Path, own: bool) -> None:
        """Drain `directory` into Kafka; for our own spool also decide when to go back to DIRECT."""
        try:
            reader = await asyncio.to_thread(SpoolReader, directory, REPLAY_READER)
        except SpoolLocked:
            log.info("spool %s is replayed by another process", directory)
            return
        backoff = 0.5
        try:
            while not self._closing:
                batch = await asyncio.to_thread(reader.read_batch, REPLAY_BATCH_RECORDS, REPLAY_BATCH_BYTES)
                if batch.records:
                    try:
                        await asyncio.wait_for(
                            self.producer.produce_bulk(batch.records), max(self.ack_timeout, 30)
                        )
                    except Exception as exc:
                        log.warning("spool replay to Kafka failed (%s); retrying in %.1fs", exc, backoff)
                        await self._sleep(backoff)
                        backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                        reader = await asyncio.to_thread(_rewind, reader)
                        continue
                    backoff = 0.5
                    await asyncio.to_thread(reader.commit, batch)
                    if own:
                        await self.spool.spool.remeasure()
                    metrics.SPOOL_REPLAYED_RECORDS.inc(len(batch.records))
                    continue
                if own and self.mode is Mode.SPOOLING and self._spool_appends == 0:
                    await self._probe_and_resume()
                if not own:
                    log.info("adopted spool %s fully replayed", directory)
                    return
                await self._sleep(IDLE_POLL_SECONDS if self.mode is Mode.DIRECT else backoff)
        finally:
            await asyncio.to_thread(reader.close)

    async def _probe_and_resume(self) -> None:
        """Caught up with our spool: go DIRECT once the producer can reach Kafka."""
        try:
            reachable = await asyncio.wait_for(self.producer.ping(), self.ack_timeout)
        except Exception:
            return
        if reachable:
            self._set_mode(Mode.DIRECT)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), 10)
        await self.spool.close()

    def readiness(self) -> Readiness:
        spool = self.spool.readiness()
        if not spool.ready:
            return spool
        if self.mode is Mode.SPOOLING:
            return Readiness(ready=True, degraded=True, detail="spooling: Kafka unavailable or catching up")
        return Readiness(ready=True, degraded=False, detail="kafka")


def _has_backlog(directory: Path) -> bool:
    with SpoolReader(directory, REPLAY_READER) as reader:
        return reader.lag() > 0


def _rewind(reader: SpoolReader) -> SpoolReader:
    """Re-open the reader at its committed cursor so a failed batch is read again."""
    directory, name = reader.directory, reader.name
    reader.close()
    return SpoolReader(directory, name)
