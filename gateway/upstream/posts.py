"""A lean keep-alive HTTP/1.1 client for the upstream sink's POSTs (forwarded capture requests).

The sink posts one upstream request per capture request, and aiohttp's client spends about 240 µs of
CPU on each here, where a plain asyncio protocol spends about 40 µs (measured side by side, 5 KB
bodies to the same local server). So the sink's POSTs take this path: one write per request (head and
body, `Content-Length`, never chunked), a keep-alive pool, and a response parser for what servers send
back (`Content-Length`, chunked or close-delimited bodies, skipped 1xx). Everything else (GETs,
redirects, streaming, the proxy routes) stays on aiohttp (gateway/upstream/client.py). Like aiohttp
for a POST, a request is never re-sent once written; a connection error before it is retried.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from yarl import URL

from gateway.metrics import serve as metrics
from gateway.upstream.client import RETRY_BACKOFF, UpstreamError

MAX_HEAD_BYTES = 64 * 1024
IDLE_SECONDS = 15.0  # below common server keep-alive timeouts (nginx 75 s, ALBs 60 s)


class ProtocolError(Exception):
    """The upstream's answer is not HTTP/1.x this parser can read."""


class Response(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool


def parse_response(buffer: bytes | bytearray, eof: bool) -> tuple[Response, int] | None:
    """The first complete final response in `buffer` and the bytes it took, or None while incomplete
    (`eof`: the server closed the connection, which ends a close-delimited body)."""
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > MAX_HEAD_BYTES:
                raise ProtocolError("response head too large")
            if eof:
                raise ProtocolError("connection closed before a complete response")
            return None
        lines = bytes(buffer[start:end]).split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise ProtocolError(f"bad status line {status_line[:40]!r}")
        try:
            status = int(status_line[9:12])
        except ValueError as exc:
            raise ProtocolError(f"bad status line {status_line[:40]!r}") from exc
        body_start = end + 4
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the final answer follows
            start = body_start
            continue
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get(b"connection", b"").lower()
        keep_alive = status_line.startswith(b"HTTP/1.1") and b"close" not in connection
        if status in (204, 304):
            return Response(status, b"", keep_alive), body_start
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            chunked = _chunked_body(buffer, body_start)
            if chunked is None:
                if eof:
                    raise ProtocolError("connection closed inside a chunked body")
                return None
            body, taken = chunked
            return Response(status, body, keep_alive), taken
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError as exc:
                raise ProtocolError(f"bad Content-Length {length[:20]!r}") from exc
            if len(buffer) - body_start < size:
                if eof:
                    raise ProtocolError("connection closed inside the body")
                return None
            return Response(status, bytes(buffer[body_start:body_start + size]), keep_alive), body_start + size
        if not eof:  # the body runs until the server closes the connection
            return None
        return Response(status, bytes(buffer[body_start:]), False), len(buffer)


def _chunked_body(buffer: bytes | bytearray, position: int) -> tuple[bytes, int] | None:
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        try:
            size = int(bytes(buffer[position:line_end]).split(b";")[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError("bad chunk size") from exc
        position = line_end + 2
        if size == 0:  # then optional trailer lines and an empty line
            trailer_end = buffer.find(b"\r\n", position)
            while trailer_end > position:
                position = trailer_end + 2
                trailer_end = buffer.find(b"\r\n", position)
            if trailer_end < 0:
                return None
            return b"".join(parts), trailer_end + 2
        if len(buffer) < position + size + 2:
            return None
        parts.append(bytes(buffer[position:position + size]))
        position += size + 2


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._settle(eof=False)

    def eof_received(self) -> bool:
        self._settle(eof=True)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self._settle(eof=True)
            if not waiter.done():
                waiter.set_exception(exc or ConnectionResetError("upstream closed the connection"))

    def _settle(self, eof: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            if self.buffer:  # bytes nobody asked for: the connection cannot be trusted
                self.close()
            return
        try:
            parsed = parse_response(self.buffer, eof)
        except ProtocolError as exc:
            waiter.set_exception(exc)
            return
        if parsed is not None:
            response, taken = parsed
            keep = response.keep_alive and taken == len(self.buffer) and not eof
            self.buffer.clear()
            waiter.set_result(response if keep else response._replace(keep_alive=False))

    async def exchange(self, payload: Sequence[bytes], timeout: float) -> Response:
        assert self.transport is not None
        self.waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(payload)
        async with asyncio.timeout(timeout):
            return await waiter

    def close(self) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.cancel()  # nobody waits for it any more
        if self.transport is not None:
            self.transport.close()


class PostClient:
    """POSTs to one upstream origin over a pool of keep-alive connections."""

    def __init__(
        self, base: URL, *, connections: int, retries: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """`ssl_context`: for an https `base`, what verifies the upstream (default: the system's CAs)."""
        if base.scheme not in ("http", "https") or not base.raw_host:
            raise ValueError(f"not an http(s) URL: {base}")
        self.host = base.raw_host
        self.port = base.explicit_port or (443 if base.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if base.scheme == "https" else None
        host_header = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        if base.explicit_port is not None:
            host_header = f"{host_header}:{self.port}"
        self._host = f"Host: {host_header}\r\n".encode()
        self._prefix = base.raw_path.rstrip("/").encode()
        self.connections = connections
        self.retries = retries
        self._idle: list[_Connection] = []
        self._latency: dict[tuple[str, int], Any] = {}  # labelled children, looked up once

    async def post(
        self, path: str, headers: Sequence[tuple[str, str]], body: bytes, *, route: str, timeout: float
    ) -> tuple[int, bytes]:
        """Send `body` to the upstream's `path` (path+query, already encoded); its status and body.

        Raises UpstreamError (timeout, connect_error, error) when no complete answer came."""
        started = time.perf_counter()
        connection = self._idle_connection() or await self._connect(route, started)
        head = [b"POST ", self._prefix, path.encode(), b" HTTP/1.1\r\n", self._host]
        for name, value in headers:
            if "\r" not in value and "\n" not in value:  # never let a value split the head
                head.append(f"{name}: {value}\r\n".encode(errors="surrogateescape"))
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        response: Response | None = None
        try:
            response = await connection.exchange((b"".join(head), body), timeout)
        except (OSError, TimeoutError, ProtocolError) as exc:
            self._failed(route, started, "timeout" if isinstance(exc, TimeoutError) else "error")
            raise UpstreamError("timeout" if isinstance(exc, TimeoutError) else "error",
                                f"{type(exc).__name__}: {exc}") from exc
        finally:
            if response is not None and response.keep_alive and len(self._idle) < self.connections:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:  # incomplete (cancelled, timed out, failed), not reusable, or the pool is full
                connection.close()
        self._observe(route, response.status, time.perf_counter() - started)
        if response.status >= 500:
            metrics.UPSTREAM_ERRORS.labels(route, f"status_{response.status}").inc()
        return response.status, response.body

    def _idle_connection(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self, route: str, started: float) -> _Connection:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
                return connection
            except OSError as exc:
                if attempt < self.retries:
                    await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
                    attempt += 1
                    continue
                self._failed(route, started, "connect_error")
                raise UpstreamError("connect_error", f"{type(exc).__name__}: {exc}") from exc

    def _observe(self, route: str, status: int, seconds: float) -> None:
        latency = self._latency.get((route, status))
        if latency is None:
            latency = self._latency[(route, status)] = metrics.UPSTREAM_LATENCY.labels(route, str(status))
        latency.observe(seconds)

    def _failed(self, route: str, started: float, cause: str) -> None:
        metrics.UPSTREAM_LATENCY.labels(route, cause).observe(time.perf_counter() - started)
        metrics.UPSTREAM_ERRORS.labels(route, cause).inc()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
