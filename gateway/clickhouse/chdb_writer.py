"""Embedded ClickHouse (chdb) writer: one session, used only from one dedicated thread.

chdb sessions are not thread-safe (concurrent inserts fail or duplicate), and one process owns a
data directory, so every call is funnelled through a single-thread executor. The writer holds
`gateway.lock` in the data directory: a second process (another sink, `gateway gdpr`) gets a
one-line error instead of chdb's own failure (printed from C++ plus a traceback).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.clickhouse.schema import ServerCaps, quote_string
from gateway.clickhouse.writer import Body, body_chunks, classify, insert_statement
from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.spool.errors import SpoolLocked
from gateway.spool.locks import FileLock

LOCK_FILE = "gateway.lock"


class ChdbWriter:
    """Writer backed by an in-process chdb session on `path`."""

    max_in_flight = 1

    def __init__(self, executor: ThreadPoolExecutor, session: Any, caps: ServerCaps, lock: FileLock) -> None:
        self._executor = executor
        self._session = session
        self.caps = caps
        self._lock = lock

    @classmethod
    async def open(cls, path: str) -> ChdbWriter:
        """Lock the data directory, create the session inside its dedicated thread, probe the version."""
        require_chdb(path)
        lock = _lock(Path(path))
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(executor, _open_session, path)
            version = await loop.run_in_executor(executor, _query, session, "SELECT version()")
        except BaseException:
            executor.shutdown(wait=False)
            lock.release()
            raise
        return cls(executor, session, ServerCaps.from_version(version), lock)

    async def _run(self, function: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except RuntimeError as exc:
            raise classify(str(exc)) from exc

    async def command(self, sql: str) -> None:
        await self._run(_query, self._session, sql)

    async def select(self, sql: str) -> list[list[str]]:
        text = await self._run(_query, self._session, sql)
        return [line.split("\t") for line in text.splitlines()]

    async def fetch(self, sql: str, fmt: str) -> bytes:
        return await self._run(_fetch, self._session, sql, fmt)

    async def insert(
        self, table: str, body: Body, dedup_token: str | None, columns: Sequence[str] = ()
    ) -> None:
        statement, fmt = insert_statement(table, columns).rsplit(" FORMAT ", 1)
        # The events table is a ReplacingMergeTree: collapsing rows of one block at insert time cost
        # about 40 % of chdb's insert CPU; background merges (and FINAL) collapse them as they do
        # rows of different inserts.
        statement += " SETTINGS optimize_on_insert = 0"
        if dedup_token is not None:
            statement += f", insert_deduplication_token = {quote_string(dedup_token)}"
        await self._run(_insert, self._session, statement, fmt, body)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._session.close)
        self._executor.shutdown(wait=True)
        self._lock.release()


def _lock(path: Path) -> FileLock:
    """Hold the chdb data directory for this process (chdb allows one process per directory)."""
    lock = FileLock(path / LOCK_FILE)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except SpoolLocked as error:
        holder = str(error).rpartition("(")[2].rstrip(")")
        raise StartupError("chdb path", path, f"locked by another sink or gdpr command ({holder})") from None
    except OSError as error:
        raise StartupError("chdb path", path, error.strerror or str(error)) from None
    return lock


def require_chdb(path: str) -> None:
    """chdb is an extra (`posthog-gateway[chdb]`): without it, one line and exit 2 instead of a traceback."""
    if importlib.util.find_spec("chdb") is None:
        raise StartupError("ClickHouse target", f"chdb://{path}", "chdb is not installed: pip install "
                           "'posthog-gateway[chdb]' (from a clone: pip install '.[chdb]')", exit_code=CONFIG_EXIT)


def _open_session(path: str) -> Any:
    from chdb import session

    return session.Session(path)


def _query(session: Any, sql: str) -> str:
    result = session.query(sql, "TabSeparated")
    return result.bytes().decode() if result is not None else ""


def _fetch(session: Any, sql: str, fmt: str) -> bytes:
    result = session.query(sql, fmt)
    return result.bytes() if result is not None else b""


def _insert(session: Any, statement: str, fmt: str, body: Body) -> None:
    with session.send_insert(statement, fmt) as inserter:
        for chunk in body_chunks(body):
            inserter.append(chunk)
        inserter.finish()
