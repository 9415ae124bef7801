"""The HTTP client every upstream request goes through: header hygiene, timeouts, safe retries, circuit.

One keep-alive pool (aiohttp `ClientSession`) per use. Responses are read whole and passed on as
received: `auto_decompress=False` keeps the upstream's bytes and its `Content-Encoding` together, and
`Content-Length` is dropped so aiohttp recomputes it from those same bytes (never stale, never
double-encoded), except in the answer to a HEAD, which has no bytes. The upstream's Host and TLS SNI
come from its URL; cookies are neither sent nor kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.metrics import serve as metrics
from gateway.upstream.circuit import CircuitBreaker

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade"}
)
# Replaced by the upstream's own values, or never forwarded: cookies (431s, privacy) and client-IP
# headers (the upstream gets exactly one X-Forwarded-For: the client IP the edge resolved).
_DROP_REQUEST = HOP_BY_HOP | {
    "host", "cookie", "content-length", "expect", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "x-real-ip", "forwarded", "cf-connecting-ip", "true-client-ip", "fly-client-ip",
}
# Ours are added by the edge (CORS); cookies of the upstream's domain mean nothing on ours.
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "set-cookie", "server", "date"}
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_BACKOFF = 0.1


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    """Headers named in `Connection` are hop-by-hop too (RFC 9110 §7.6.1)."""
    return {token.strip().lower() for token in headers.get("Connection", "").split(",") if token.strip()}


def request_headers(incoming: CIMultiDictProxy[str], client_ip: str) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, Host, Cookie and client-IP headers; XFF = the client IP."""
    drop = _DROP_REQUEST | _connection_tokens(incoming)
    headers = CIMultiDict((name, value) for name, value in incoming.items() if name.lower() not in drop)
    if client_ip:
        headers["X-Forwarded-For"] = client_ip
    return headers


def response_headers(upstream: CIMultiDictProxy[str], head: bool = False) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop, cookies, its CORS headers and a stale Content-Length.

    The answer to a HEAD keeps its Content-Length: it is the length of the body a GET would get, and there
    are no bytes to recompute it from."""
    drop = (_DROP_RESPONSE - {"content-length"} if head else _DROP_RESPONSE) | _connection_tokens(upstream)
    return CIMultiDict(
        (name, value)
        for name, value in upstream.items()
        if name.lower() not in drop and not name.lower().startswith("access-control-")
    )


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDict[str]  # already filtered by `response_headers`
    body: bytes


class UpstreamError(Exception):
    """No usable answer from the upstream; `cause` is timeout, connect_error or error."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"upstream {cause}: {detail}")
        self.cause = cause


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    return "error"


class UpstreamClient:
    """`request()` with a keep-alive pool and a circuit breaker per upstream origin.

    `circuit_failures=0` turns the breaker off (the upstream sink has its own failover and backoff).
    """

    def __init__(
        self, *, connections: int, retries: int, circuit_failures: int = 0, circuit_reset: float = 0.0
    ) -> None:
        self.connections = connections
        self.retries = retries
        self.circuit_failures = circuit_failures
        self.circuit_reset = circuit_reset
        self._breakers: dict[str, CircuitBreaker] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit_per_host=self.connections, keepalive_timeout=30, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            # Forward what the client sent, nothing aiohttp would add on its own.
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def breaker(self, url: URL) -> CircuitBreaker | None:
        if not self.circuit_failures:
            return None
        origin = str(url.origin())
        breaker = self._breakers.get(origin)
        if breaker is None:
            breaker = self._breakers[origin] = CircuitBreaker(origin, self.circuit_failures, self.circuit_reset)
        return breaker

    async def request(
        self,
        method: str,
        url: URL,
        *,
        route: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float,
        follow_redirects: bool = False,
    ) -> UpstreamResponse:
        """One upstream request. Retried only when safe: idempotent GET/HEAD, or a connection never made.

        Raises CircuitOpen (without trying) while the upstream is considered down, UpstreamError when
        no answer came. 5xx answers are returned, and count as failures for the circuit.
        """
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        breaker = self.breaker(url)
        idempotent = method in ("GET", "HEAD")
        attempt = 0
        while True:
            if breaker is not None:
                breaker.check()
            started = time.perf_counter()
            try:
                async with self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=follow_redirects,
                    max_redirects=3,
                ) as response:
                    data = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                if breaker is not None:
                    breaker.failure()
                cause = _cause(exc)
                metrics.UPSTREAM_LATENCY.labels(route, cause).observe(time.perf_counter() - started)
                metrics.UPSTREAM_ERRORS.labels(route, cause).inc()
                if attempt < self.retries and (idempotent or cause == "connect_error"):
                    await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
                    attempt += 1
                    continue
                raise UpstreamError(cause, f"{type(exc).__name__}: {exc}") from exc
            status = response.status
            metrics.UPSTREAM_LATENCY.labels(route, str(status)).observe(time.perf_counter() - started)
            if breaker is not None:
                breaker.failure() if status >= 500 else breaker.success()
            if status >= 500:
                metrics.UPSTREAM_ERRORS.labels(route, f"status_{status}").inc()
                if status in RETRY_STATUSES and idempotent and attempt < self.retries:
                    await asyncio.sleep(RETRY_BACKOFF * 2**attempt)
                    attempt += 1
                    continue
            return UpstreamResponse(status, response_headers(response.headers, head=method == "HEAD"), data)
