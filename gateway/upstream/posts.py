"""A lean keep-alive HTTP/1.1 client for the upstream sink's POSTs (forwarded capture requests).

The sink posts one upstream request per capture request, and aiohttp's client spends about 240 µs of
CPU on each here, where a plain asyncio protocol spends about 40 µs (measured side by side, 5 KB
bodies to the same local server). So the sink's POSTs take this path: one write per request (head and
body, `Content-Length`, never chunked), a keep-alive pool, and httptools (llhttp, uvicorn's parser)
to read the answers (`Content-Length`, chunked or close-delimited bodies, skipped 1xx). Everything
else (GETs, redirects, streaming, the proxy routes) stays on aiohttp (gateway/upstream/client.py).
Like aiohttp for a POST, a request is never re-sent once written; a connection error before it is
retried.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import httptools
from aiohttp import BasicAuth
from yarl import URL

from gateway.metrics import serve as metrics
from gateway.upstream.client import RETRY_BACKOFF, UpstreamError

MAX_HEAD_BYTES = 64 * 1024
IDLE_SECONDS = 15.0  # below common server keep-alive timeouts (nginx 75 s, ALBs 60 s)


class ProtocolError(Exception):
    """The upstream's answer is not HTTP/1.x the parser can read."""


class Response(NamedTuple):
    status: int
    body: bytes
    keep_alive: bool


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time. httptools (llhttp) reads the answers: its
    callbacks collect the body, and 1xx answers before the final one are skipped."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.head_size = 0  # bytes received before the headers were complete
        self.in_head = True
        self.framed = False  # Content-Length or Transfer-Encoding: the body does not end at EOF
        self.body: list[bytes] = []
        self.response: Response | None = None  # the final answer, once complete
        self.extra = False  # more bytes came after it

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.response is not None:
            self.extra = True
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self.response = Response(status, b"".join(self.body), self.parser.should_keep_alive())
        else:  # 100 Continue, 103 Early Hints: the final answer follows
            self.in_head = True
            self.framed = False
            self.body.clear()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        if self.in_head:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.response is None:
                waiter.set_exception(ProtocolError(f"{type(exc).__name__}: {exc}"))
                return
            # else bytes after a complete answer: on_message_begin marked them, or the answer had closed
            # the connection (llhttp refuses data after that; the answer is not kept alive anyway)
        response = self.response
        if response is not None:
            if self.extra:
                response = response._replace(keep_alive=False)
            self._reset()
            waiter.set_result(response)
        elif self.in_head and self.head_size > MAX_HEAD_BYTES:
            waiter.set_exception(ProtocolError("response head too large"))

    def eof_received(self) -> bool:
        self._end()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end(exc)

    def _end(self, exc: Exception | None = None) -> None:
        """The server closed the connection: that completes a body without framing, else the answer
        is cut short."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self.in_head and not self.framed:
            status = self.parser.get_status_code()
            waiter.set_result(Response(status, b"".join(self.body), False))
        elif exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_exception(ProtocolError("connection closed before a complete response"))

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
        if (auth := BasicAuth.from_url(base)) is not None:  # credentials in --upstream, as aiohttp sends them
            self._host += f"Authorization: {auth.encode()}\r\n".encode()
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
