"""Every request's way in: one dispatcher as the server's handler, one middleware for what the router serves.

aiohttp's router, match info, middleware chain and `on_response_prepare` signal cost about as much as
the capture pipeline itself on a single event. So the low-level server gets one handler,
`Front.dispatch`: a capture path (an exact path, looked up in a dict) goes straight to its handler;
everything else (probes, /metrics, GDPR, the reverse proxy, path aliases, `Expect: 100-continue`)
goes through the app as before, where `Front.middleware` is the app's only middleware. Both ways do
the same around the handler: the request id (accepted or generated, echoed), the edge policy
(gateway/edge/policy.py), unhandled errors → logged 500, and `Connection: close` once draining.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

from aiohttp import hdrs, web
from aiohttp.web import AbstractRoute

from gateway.edge.headers import omit_server_header
from gateway.edge.policy import EdgePolicy, Handler, RoutePolicy
from gateway.logs import REQUEST_ID_HEADER, incoming_or_new_id, request_id
from gateway.metrics import serve as metrics

log = logging.getLogger("gateway.request")
INTERNAL_ERROR_BODY = b'{"status":500,"code":"internal_error","error":"internal server error"}'


class Draining(Protocol):
    """The worker's drain state (gateway/http/lifecycle.py `Drain`)."""

    active: bool


def install_dispatcher(runner: web.AppRunner) -> None:
    """Make the Front of `runner`'s app (set up already) the handler of its server, if it has one."""
    front = runner.app.get(FRONT_KEY)
    if front is not None:
        front.install(runner)


class GatewayRequest(web.Request):
    """The app's request; one the dispatcher answers has no match info, so no app signal to send."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if self._match_info is None:  # what the app's on_response_prepare does, without the signal
            await omit_server_header(self, response)
        else:
            await super()._prepare_hook(response)


class Front:
    """The request id, edge policy and error handling around every handler; `dispatch` serves the
    capture paths without the router once `install`ed on the app's runner."""

    def __init__(self, policy: EdgePolicy, drain: Draining) -> None:
        self.policy = policy
        self.drain = drain
        # exact path → (the route the policy knows it by, its handler); the policy's RoutePolicy is
        # looked up per request, since a reload replaces it (gateway/edge/setup.py).
        self.direct: dict[str, tuple[AbstractRoute, Handler]] = {}
        self.fallback: Handler | None = None  # the app's own handler (router + middleware)

    def serve_directly(self, path: str, route: AbstractRoute, handler: Handler) -> None:
        """Serve `path` (also registered with the router as `route`) without the router."""
        self.direct[path] = (route, handler)

    def install(self, runner: web.AppRunner) -> None:
        """Make `dispatch` the handler of `runner`'s server (after `runner.setup()`)."""
        server = runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")
        self.fallback = server.request_handler
        server.request_handler = self.dispatch
        server.request_factory = functools.partial(server.request_factory, _cls=GatewayRequest)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        direct = self.direct.get(request.rel_url.path_safe)  # what the router matches on
        if direct is None or hdrs.EXPECT in request.headers:
            assert self.fallback is not None
            return await self.fallback(request)
        route, handler = direct
        return await self._serve(request, self.policy.routes.get(route), handler)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await self._serve(request, self.policy.routes.get(request.match_info.route), handler)

    async def _serve(self, request: web.Request, route: RoutePolicy | None, handler: Handler) -> Any:
        rid = incoming_or_new_id(request.headers.get(REQUEST_ID_HEADER))
        token = request_id.set(rid)
        try:
            response = await self.policy.serve(request, route, handler)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        except Exception:
            name = route.name if route is not None else "unknown"
            log.exception("unhandled error", extra={"route": name})
            metrics.HTTP_REQUESTS.labels(name, "500").inc()
            response = web.Response(status=500, body=INTERNAL_ERROR_BODY, content_type="application/json")
        finally:
            request_id.reset(token)
        response.headers[REQUEST_ID_HEADER] = rid
        if self.drain.active:
            response.force_close()
        return response


FRONT_KEY = web.AppKey("front", Front)
