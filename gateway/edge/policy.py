"""The edge policy in one function (`EdgePolicy.serve`): a single fast path instead of one middleware per concern.

gateway/http/dispatch.py calls it for every request of the app; `middleware` is for the admin listener.

Order, cheapest rejection first: unknown route → 404, OPTIONS → local preflight, method → 405,
management access → 403, in-flight bound → 503 + Retry-After, client-IP rate → 429 + Retry-After.
Every answer, the handler's included, then gets CORS and security headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web import AbstractRoute
from yarl import URL

from gateway.core.errors import GatewayError
from gateway.edge.access import AdminAccess
from gateway.edge.aliases import PathAlias
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.cors import CorsPolicy
from gateway.edge.errors import Forbidden, MethodNotAllowed, Overloaded, RateLimited, RouteNotFound
from gateway.edge.ratelimit import SlidingWindow
from gateway.http.responses import error_response
from gateway.metrics import serve as metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OVERLOAD_RETRY_AFTER = 2


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What the edge enforces on one route family before its handler runs."""

    name: str
    methods: frozenset[str]
    ip_limit: SlidingWindow | None = None
    management: bool = False
    bounded: bool = True  # counts toward --max-in-flight (probes and metrics do not)
    alias: PathAlias | None = None  # registered under a path alias: handlers see the real path
    on_forbidden: Callable[[web.Request], Awaitable[None]] | None = None  # e.g. audit a refused GDPR caller


class EdgePolicy:
    def __init__(
        self,
        *,
        client_ip: ClientIpResolver,
        cors: CorsPolicy,
        admin: AdminAccess,
        headers: tuple[tuple[str, str], ...],
        max_in_flight: int,
    ) -> None:
        self.client_ip = client_ip
        self.cors = cors
        self.admin = admin
        self.headers = headers
        self.max_in_flight = max_in_flight or float("inf")
        self.in_flight = 0
        self.finished = 0  # bounded requests answered (the drain reports them)
        self.routes: dict[AbstractRoute, RoutePolicy] = {}

    def add_route(self, router: web.UrlDispatcher, path: str, handler: Handler, policy: RoutePolicy) -> AbstractRoute:
        """Register `handler` for every method; `serve` enforces `policy.methods`."""
        route = router.add_route("*", path, handler)
        self.routes[route] = policy
        return route

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await self.serve(request, self.routes.get(request.match_info.route), handler)

    async def serve(self, request: web.Request, route: RoutePolicy | None, handler: Handler) -> web.StreamResponse:
        """Answer `request` for the route family `route` (None: no such route) with `handler`."""
        if route is None:
            return self._refuse(request, "unknown", RouteNotFound(f"no route for {request.path[:200]}"))
        if route.alias is not None:
            request = request.clone(rel_url=URL(route.alias.rewrite(request.raw_path), encoded=True))
        method = request.method
        if method == "OPTIONS":
            return self._finish(request, self.cors.preflight(request, route.methods))
        if method not in route.methods:
            return self._refuse(request, route.name, MethodNotAllowed(f"method {method[:20]} not allowed"))
        if route.management and not self.admin.allows(request):
            refusal = Forbidden("management endpoints need an allowed address or a token")
            if route.on_forbidden is not None:
                await route.on_forbidden(request)
            return self._refuse(request, route.name, refusal)
        if not route.bounded:
            return self._finish(request, await handler(request))
        if self.in_flight >= self.max_in_flight:
            return self._refuse(
                request, route.name, Overloaded("gateway overloaded, retry later", OVERLOAD_RETRY_AFTER)
            )
        if route.ip_limit is not None and (retry_after := route.ip_limit.hit(self.client_ip(request))):
            metrics.RATE_LIMITED.labels(route.name, "ip").inc()
            refusal = RateLimited("too many requests from this client", retry_after)
            return self._refuse(request, route.name, refusal)
        self.in_flight += 1
        try:
            response = await handler(request)
        finally:
            self.in_flight -= 1
            self.finished += 1
        return self._finish(request, response)

    def _refuse(self, request: web.Request, route: str, error: GatewayError) -> web.StreamResponse:
        return self._finish(request, error_response(request, route, error))

    def _finish(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        headers = response.headers
        self.cors.apply(request, headers)
        headers.update(self.headers)
        return response
