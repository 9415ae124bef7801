"""Several ClickHouse HTTP endpoints, replicas of one shard, used as one writer with failover.

Every statement goes to the current replica; a transient failure there (unreachable, a reset
connection, a replica without ZooKeeper) moves the statement, and every later one, to the next
replica in the list. When every replica failed the error is raised: the worker backs off and
retries, nothing is committed meanwhile. Bad-data errors are the rows' fault, never failed over.

A retried insert may land on another replica than the failed attempt: the replicated tables'
block deduplication (hashes kept in ZooKeeper, shared by the replicas) drops a retried identical
block whichever replica stored it first.

With an insert quorum N, an insert returns only once N replicas hold it. A quorum error (too few live
replicas, a previous quorum insert still pending, quorum not reached in time) is the cluster's state,
the same on every replica: it is raised without failing over, and the worker retries with backoff.
ClickHouse before 21.1 takes one quorum insert per table at a time ("Another quorum insert has been
already started", code 286, immediately): the writer then takes one insert at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from gateway.clickhouse.http_writer import HttpWriter
from gateway.clickhouse.schema import ServerCaps
from gateway.clickhouse.writer import ErrorKind, WriteError
from gateway.core.startup import StartupError
from gateway.metrics.clickhouse import CLICKHOUSE_REPLICA_UP

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long an insert waits for its quorum before failing with code 319 (ClickHouse's default: 10 min).
# A retry of the same block is deduplicated, or refused (286) while that quorum is still pending.
QUORUM_TIMEOUT_MS = 60_000


def redact(url: str) -> str:
    """The URL without user and password, for logs and labels."""
    from gateway.settings.check import redact_password

    return redact_password(url)


class ReplicaWriter:
    """A Writer over replicas `urls`, failing over in list order and wrapping around."""

    def __init__(self, urls: Sequence[str], max_in_flight: int, compression: str, insert_quorum: int = 0) -> None:
        self.urls = list(urls)
        self.max_in_flight = max_in_flight
        self._compression = compression
        self._insert_settings = quorum_settings(insert_quorum)
        self._writers: list[HttpWriter | None] = [None] * len(self.urls)
        self._current = 0
        self.caps = ServerCaps((0,))

    @classmethod
    async def connect(cls, urls: Sequence[str], max_in_flight: int = 4, compression: str = "none",
                      insert_quorum: int = 0) -> ReplicaWriter:
        """Connect to every replica; one that is down is logged (degraded) and retried when needed.
        None reachable is a start-up error (exit 1). Every insert waits for `insert_quorum` replicas (0: off)."""
        writer = cls(urls, max_in_flight, compression, insert_quorum)
        errors = []
        for index in range(len(urls)):
            try:
                await writer._writer(index)
            except WriteError as error:
                errors.append(f"{redact(urls[index])}: {error}")
                log.warning("ClickHouse replica %s unreachable at start: running degraded on the others (%s)",
                            redact(urls[index]), error)
        up = [i for i, w in enumerate(writer._writers) if w is not None]
        if not up:
            raise StartupError("--clickhouse-url", ",".join(map(redact, urls)),
                               "no replica reachable: " + "; ".join(errors))
        writer._current = up[0]
        first = writer._writers[up[0]]
        assert first is not None
        writer.caps = first.caps
        if insert_quorum and not writer.caps.parallel_quorum and max_in_flight > 1:
            log.info("insert quorum %d on ClickHouse %s: one insert at a time (no parallel quorum inserts "
                     "before 21.1)", insert_quorum, ".".join(map(str, writer.caps.version)))
            writer.max_in_flight = 1
        return writer

    @property
    def current_url(self) -> str:
        return self.urls[self._current]

    def replicas(self) -> list[tuple[str, HttpWriter | None]]:
        """Each replica's URL and its connected writer (None while it is unreachable)."""
        return list(zip(self.urls, self._writers, strict=True))

    async def connect_all(self) -> list[tuple[str, HttpWriter | None]]:
        """Each replica's URL and writer, connecting those not connected yet (None: unreachable)."""
        for index in range(len(self.urls)):
            with contextlib.suppress(WriteError):
                await self._writer(index)
        return self.replicas()

    async def _writer(self, index: int) -> HttpWriter:
        writer = self._writers[index]
        if writer is None:
            try:
                writer = await HttpWriter.connect(self.urls[index], self.max_in_flight, self._compression,
                                                  self._insert_settings)
            except WriteError:
                CLICKHOUSE_REPLICA_UP.labels(redact(self.urls[index])).set(0)
                raise
            self._writers[index] = writer
            CLICKHOUSE_REPLICA_UP.labels(redact(self.urls[index])).set(1)
        return writer

    async def _each(self, call: Callable[[HttpWriter], Awaitable[T]]) -> T:
        """`call` on the current replica, else on the next ones; the last error when all failed."""
        start = self._current
        error: WriteError | None = None
        for step in range(len(self.urls)):
            index = (start + step) % len(self.urls)
            try:
                result = await call(await self._writer(index))
            except WriteError as failure:
                if failure.kind is ErrorKind.BAD_DATA or failure.quorum:
                    raise
                error = failure
                CLICKHOUSE_REPLICA_UP.labels(redact(self.urls[index])).set(0)
                if self._current == index and len(self.urls) > 1:
                    self._current = (index + 1) % len(self.urls)
                    log.warning("ClickHouse replica %s failed (%s): failing over to %s",
                                redact(self.urls[index]), failure, redact(self.current_url))
                continue
            CLICKHOUSE_REPLICA_UP.labels(redact(self.urls[index])).set(1)
            return result
        assert error is not None
        raise error

    async def command(self, sql: str, settings: Mapping[str, str] | None = None) -> None:
        await self._each(lambda w: w.command(sql, settings))

    async def select(self, sql: str) -> list[list[str]]:
        return await self._each(lambda w: w.select(sql))

    async def fetch(self, sql: str, fmt: str) -> bytes:
        return await self._each(lambda w: w.fetch(sql, fmt))

    async def insert(self, table: str, body: bytes, dedup_token: str | None, columns: Sequence[str] = ()) -> None:
        await self._each(lambda w: w.insert(table, body, dedup_token, columns))

    async def close(self) -> None:
        for writer in self._writers:
            if writer is not None:
                await writer.close()


def quorum_settings(insert_quorum: int) -> dict[str, str]:
    """The ClickHouse settings of an insert acknowledged only once `insert_quorum` replicas hold it."""
    if not insert_quorum:
        return {}
    return {"insert_quorum": str(insert_quorum), "insert_quorum_timeout": str(QUORUM_TIMEOUT_MS)}
