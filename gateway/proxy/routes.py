"""The proxied SDK routes: flags, an allowlist of /api routes, logs/metrics, static assets and remote config.

Each request goes to its upstream with the path and query exactly as received (`raw_path`), less the
`--prefix` it came under (the upstream serves PostHog's paths, not the app's mount point). SDKs are
never sent a redirect: asset GETs follow the upstream's redirects, anything else answers 502. `/static`
and `/array` answers are cached (gateway/proxy/cache.py); their bytes are never altered (the loader
checks SRI integrity). OPTIONS, CORS, methods and rate limits are the edge's, per route family.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from gateway.core.errors import GatewayError
from gateway.edge.aliases import unprefixed
from gateway.edge.setup import Edge
from gateway.flags.answer import LocalFlags, is_evaluation
from gateway.http.responses import error_response, read_body
from gateway.metrics import serve as metrics
from gateway.privacy.ip import IpMode, minimise_ip
from gateway.proxy.cache import Entry, Freshness, ResponseCache, etag_matches
from gateway.settings import ServeSettings
from gateway.upstream.circuit import CircuitOpen
from gateway.upstream.client import UpstreamClient, UpstreamError, UpstreamResponse, request_headers
from gateway.upstream.hosts import Upstreams

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CONDITIONAL = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range", "Range")


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """A proxied route family: its paths, which upstream serves it, and whether answers are cached."""

    family: str
    paths: tuple[str, ...]
    target: str  # "api" or "assets"
    cacheable: bool = False


PROXY_ROUTES = (
    ProxyRoute("flags", ("/flags", "/decide", "/flags/definitions", "/api/feature_flag/local_evaluation"), "api"),
    ProxyRoute(
        "api",
        (
            "/api/surveys",
            "/api/product_tours",
            "/api/early_access_features",
            "/api/web_experiments",
            "/api/conversations/v1/widget/{tail:.+}",
            "/api/projects/{project}/feature_flags/{key}/remote_config",
        ),
        "api",
    ),
    ProxyRoute("logs", ("/i/v1/logs", "/i/v1/metrics"), "api"),
    ProxyRoute(
        "assets",
        ("/static/{tail:.+}", "/array/{token}/config", "/array/{token}/config.js", "/array/{token}/array.js"),
        "assets",
        cacheable=True,
    ),
)
PROXY_FAMILIES = tuple(route.family for route in PROXY_ROUTES)


class UpstreamUnavailable(GatewayError):
    status = 503
    code = "upstream_unavailable"


class BadGateway(GatewayError):
    status = 502
    code = "upstream_error"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


def _upstream_url(base: URL, raw_path: str) -> URL:
    """`raw_path` (path and query, still percent-encoded) appended to the base, byte for byte."""
    return URL(str(base).rstrip("/") + raw_path, encoded=True)


def _encoding_class(request: web.Request) -> str:
    """Cache variant: gzip bytes for clients that accept them, identity otherwise."""
    return "gzip" if "gzip" in request.headers.get("Accept-Encoding", "").lower() else "identity"


class Proxy:
    """Forwards proxied routes; owns the upstream client and the asset cache for the app's lifetime."""

    def __init__(self, settings: ServeSettings, upstreams: Upstreams, edge: Edge, flags_api_key: str) -> None:
        self.settings = settings
        self.bases = {"api": upstreams.api, "assets": upstreams.assets}
        self.client_ip = edge.client_ip
        self.ip_mode = IpMode(settings.ip_mode)  # proxied requests carry no token: the global mode applies
        self.client = UpstreamClient(
            connections=settings.upstream_connections,
            retries=settings.upstream_retries,
            circuit_failures=settings.upstream_circuit_failures,
            circuit_reset=settings.upstream_circuit_reset,
        )
        self.cache = ResponseCache(settings.proxy_cache_bytes) if settings.proxy_cache_bytes else None
        self._revalidating: dict[tuple[str, str], asyncio.Task] = {}
        self.local_flags = LocalFlags.from_settings(settings, self.client, upstreams.api, flags_api_key)

    def add_routes(self, app: web.Application, edge: Edge, prefixes: Sequence[str]) -> None:
        """Register every served family's paths (with and without a trailing slash) under every prefix."""
        for route in PROXY_ROUTES:
            if not edge.serves(route.family):
                continue
            for prefix in prefixes:
                handle = self.handler_for(route, prefix)
                for path in route.paths:
                    edge.add_route(app.router, prefix + path, handle, route.family)
                    if not path.endswith("+}"):
                        edge.add_route(app.router, prefix + path + "/", handle, route.family)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        await self.client.start()
        if self.local_flags is not None:
            self.local_flags.poller.start()
        yield
        if self.local_flags is not None:
            await self.local_flags.poller.close()
        for task in self._revalidating.values():
            task.cancel()
        for task in list(self._revalidating.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.close()

    def handler_for(self, route: ProxyRoute, prefix: str = "") -> Handler:
        """The handler of `route` registered under `prefix`."""
        settings = self.settings
        base = self.bases[route.target]
        assert base is not None
        timeout = settings.upstream_flags_timeout if route.family == "flags" else settings.upstream_timeout
        body_limit = settings.batch_body_limit if route.family == "logs" else settings.event_body_limit
        follow = route.target == "assets"

        async def fetch(
            request: web.Request,
            overrides: Mapping[str, str] | None = None,
            body: bytes | None = None,
            method: str | None = None,
        ) -> UpstreamResponse:
            """Forward `request` (with `body` if already read, as `method` if given); `overrides` replace
            headers (an empty value removes the header)."""
            if body is None and request.body_exists:
                body = await read_body(request, body_limit, settings.body_read_timeout)
            forwarded = request_headers(request.headers, minimise_ip(self.client_ip(request), self.ip_mode))
            for name, value in (overrides or {}).items():
                forwarded.popall(name, None)
                if value:
                    forwarded[name] = value
            method = method or request.method
            return await self.client.request(
                method,
                _upstream_url(base, upstream_path(request)),
                route=route.family,
                headers=forwarded,
                body=body,
                timeout=timeout,
                follow_redirects=follow and method in ("GET", "HEAD"),
            )

        def upstream_path(request: web.Request) -> str:
            return unprefixed(request.raw_path, prefix)  # aliases are undone already (gateway/edge/policy.py)

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                if route.cacheable and self.cache is not None and request.method in ("GET", "HEAD"):
                    return await self._cached(request, upstream_path(request), fetch)
                body = None
                # --- local flag evaluation (gateway/flags): answer here when no server-side data is needed ---
                if self.local_flags is not None and route.family == "flags" and is_evaluation(request):
                    body = await read_body(request, body_limit, settings.body_read_timeout)
                    if (local := self.local_flags.respond(request, body)) is not None:
                        return local
                # --- end local flag evaluation ---
                return self._answer(route.family, await fetch(request, body=body))
            except GatewayError as error:
                return error_response(request, route.family, error)
            except CircuitOpen as exc:
                refusal = UpstreamUnavailable(str(exc), retry_after=max(1, math.ceil(exc.retry_after)))
                return error_response(request, route.family, refusal)
            except UpstreamError as exc:  # the detail (hosts, addresses) stays out of the answer
                message = f"no answer from upstream ({exc.cause})"
                error = UpstreamTimeout(message) if exc.cause == "timeout" else BadGateway(message)
                return error_response(request, route.family, error)

        return handle

    def _answer(self, family: str, upstream: UpstreamResponse) -> web.Response:
        if 300 <= upstream.status < 400 and upstream.status != 304:
            location = upstream.headers.get("Location", "")[:200]
            raise BadGateway(f"upstream answered {upstream.status} (redirect to {location!r}); not passed to SDKs")
        metrics.HTTP_REQUESTS.labels(family, str(upstream.status)).inc()
        return web.Response(status=upstream.status, headers=upstream.headers, body=upstream.body)

    async def _cached(
        self, request: web.Request, path: str, fetch: Callable[..., Awaitable[UpstreamResponse]]
    ) -> web.Response:
        """Serve from the cache when fresh (or stale while the upstream fails), else fetch and store; entries
        are keyed by the upstream `path` (with its query). A HEAD is answered like a GET (aiohttp leaves the
        body out): the upstream is asked a GET, so the answer can be stored, as nginx's proxy_cache does."""
        assert self.cache is not None
        encoding = _encoding_class(request)
        key = (path, encoding)
        # The cache asks for whole answers in a known encoding; the client's validators are checked here.
        headers = {name: "" for name in _CONDITIONAL if name in request.headers}
        headers["Accept-Encoding"] = encoding
        entry = self.cache.get(key)
        now = self.cache.clock()
        if entry is not None and entry.fresh(now):
            return self._serve(request, entry, "hit")
        if entry is not None and entry.revalidate_in_background(now):
            self._revalidate_later(key, request, fetch, headers, entry)
            return self._serve(request, entry, "stale")
        if entry is not None and entry.etag:
            headers["If-None-Match"] = entry.etag
        try:
            upstream = await fetch(request, headers, method="GET")
        except (CircuitOpen, UpstreamError, GatewayError):
            if entry is not None and entry.usable_on_error(now):
                return self._serve(request, entry, "stale")
            raise
        if entry is not None and (upstream.status >= 500 and entry.usable_on_error(now)):
            return self._serve(request, entry, "stale")
        if entry is not None and upstream.status == 304:
            entry = entry.refreshed(upstream.headers, self.cache.clock())
            self.cache.put(key, entry)
            return self._serve(request, entry, "revalidated")
        metrics.PROXY_CACHE.labels("miss").inc()
        self._store(key, upstream)
        if upstream.status == 200 and etag_matches(request.headers.get("If-None-Match", ""),
                                                   upstream.headers.get("ETag")):
            return self._not_modified(upstream.headers)
        response = self._answer("assets", upstream)
        response.headers["X-Cache"] = "MISS"
        return response

    def _store(self, key: tuple[str, str], upstream: UpstreamResponse) -> None:
        assert self.cache is not None
        freshness = Freshness.of(upstream.headers) if upstream.status == 200 else None
        if freshness is not None:
            self.cache.put(key, Entry(upstream.headers, upstream.body, self.cache.clock(), freshness))

    def _revalidate_later(
        self,
        key: tuple[str, str],
        request: web.Request,
        fetch: Callable[..., Awaitable[UpstreamResponse]],
        headers: dict[str, str],
        entry: Entry,
    ) -> None:
        """Refresh a stale entry in the background (once per key at a time); the client is not kept waiting."""
        if key in self._revalidating:
            return
        if entry.etag:
            headers = {**headers, "If-None-Match": entry.etag}

        async def revalidate() -> None:
            try:
                upstream = await fetch(request, headers, method="GET")
                if upstream.status == 304:
                    self.cache.put(key, entry.refreshed(upstream.headers, self.cache.clock()))
                else:
                    self._store(key, upstream)
            except (CircuitOpen, UpstreamError, GatewayError):
                pass  # still stale; the next request tries again
            finally:
                self._revalidating.pop(key, None)

        self._revalidating[key] = asyncio.create_task(revalidate())

    def _serve(self, request: web.Request, entry: Entry, result: str) -> web.Response:
        metrics.PROXY_CACHE.labels(result).inc()
        if etag_matches(request.headers.get("If-None-Match", ""), entry.etag):
            return self._not_modified(entry.headers)
        metrics.HTTP_REQUESTS.labels("assets", "200").inc()
        response = web.Response(status=200, headers=entry.headers, body=entry.body)
        response.headers["X-Cache"] = result.upper()
        return response

    def _not_modified(self, headers: Mapping[str, str]) -> web.Response:
        metrics.HTTP_REQUESTS.labels("assets", "304").inc()
        kept = {name: headers[name] for name in ("ETag", "Cache-Control", "Expires", "Vary") if name in headers}
        return web.Response(status=304, headers=kept)
