"""ClickHouse over HTTP with aiohttp keep-alive, optional gzip bodies and error classification.

ClickHouse 18.16 closes idle keep-alive connections after 3 s; the pool keeps idle connections
for less than that, and a request that hits a connection the server already closed (broken
pipe, reset, disconnect) is re-sent at once on a fresh connection before counting as a failure.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp

from gateway.clickhouse.schema import ServerCaps
from gateway.clickhouse.writer import Body, ErrorKind, WriteError, body_chunks, classify, insert_statement

IDLE_KEEPALIVE_S = 2.0
STALE_CONNECTION_RETRIES = 2
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class HttpWriter:
    """Writer for a ClickHouse HTTP endpoint (`http://user:pass@host:8123/?database=db`)."""

    def __init__(
        self, url: str, session: aiohttp.ClientSession, params: dict[str, str], max_in_flight: int, gzip: bool,
        insert_settings: Mapping[str, str] | None = None,
    ) -> None:
        self._url = url
        self._session = session
        self._params = params
        self.max_in_flight = max_in_flight
        self._gzip = gzip
        self._insert_settings = dict(insert_settings or {})
        self.caps = ServerCaps((0,))

    @classmethod
    async def connect(
        cls, dsn: str, max_in_flight: int = 4, compression: str = "none",
        insert_settings: Mapping[str, str] | None = None,
    ) -> HttpWriter:
        """Open the pool and probe the server version. `insert_settings` are ClickHouse settings of every insert."""
        parts = urlsplit(dsn)
        headers = {}
        if parts.username:
            headers["X-ClickHouse-User"] = parts.username
            headers["X-ClickHouse-Key"] = parts.password or ""
        netloc = parts.hostname or "localhost"
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
        connector = aiohttp.TCPConnector(limit=max_in_flight + 2, keepalive_timeout=IDLE_KEEPALIVE_S)
        session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=300, connect=10)
        )
        writer = cls(url, session, dict(parse_qsl(parts.query)), max_in_flight, compression == "gzip", insert_settings)
        try:
            writer.caps = ServerCaps.from_version((await writer.select("SELECT version()"))[0][0])
        except BaseException:
            await session.close()
            raise
        return writer

    async def command(self, sql: str, settings: Mapping[str, str] | None = None) -> None:
        """Run a statement, with ClickHouse `settings` for this query only."""
        await self._post({**(settings or {}), "query": sql}, b"")

    async def select(self, sql: str) -> list[list[str]]:
        text = (await self._post({}, (sql + " FORMAT TabSeparated").encode())).decode()
        return [line.split("\t") for line in text.splitlines()]

    async def fetch(self, sql: str, fmt: str) -> bytes:
        return await self._post({}, f"{sql} FORMAT {fmt}".encode())

    async def insert(
        self, table: str, body: Body, dedup_token: str | None, columns: Sequence[str] = ()
    ) -> None:
        params = {**self._insert_settings, "query": insert_statement(table, columns)}
        if dedup_token is not None and self.caps.dedup_token:
            params["insert_deduplication_token"] = dedup_token
        await self._post(params, body, compress=self._gzip)

    async def _post(self, params: dict[str, str], body: Body, compress: bool = False) -> bytes:
        headers = {}
        if compress:
            body = await asyncio.to_thread(_gzip, body)
            headers["Content-Encoding"] = "gzip"
        for attempt in range(STALE_CONNECTION_RETRIES + 1):
            try:
                data = body if isinstance(body, bytes) else _stream(body)  # a stream is read once
                async with self._session.post(
                    self._url, params={**self._params, **params}, data=data, headers=headers
                ) as response:
                    payload = await response.read()
                    if response.status != 200:
                        raise classify(payload.decode(errors="replace") or f"HTTP {response.status}")
                    return payload
            except _STALE as exc:
                if attempt == STALE_CONNECTION_RETRIES:
                    raise WriteError(ErrorKind.TRANSIENT, f"connection lost: {exc!r}") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise WriteError(ErrorKind.TRANSIENT, f"request failed: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._session.close()


def _gzip(body: Body) -> bytes:
    """gzip at level 1: most of the ratio on JSON for a fraction of the CPU."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join([*map(compressor.compress, body_chunks(body)), compressor.flush()])


async def _stream(body: Body) -> AsyncIterator[bytes]:
    """A chunked request body: the rows are never joined into one copy."""
    for chunk in body_chunks(body):
        yield chunk
