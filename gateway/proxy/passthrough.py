"""`--upstream-passthrough`: capture requests forwarded to the upstream byte for byte.

The body, Content-Type, Content-Encoding, User-Agent and path+query go as received, through the upstream
sink (so a request is spooled while the upstream is away, like events). The trade-off: the gateway
does not parse the events, so its token allowlist, drop rules and any event transform do not apply,
and a malformed request is acknowledged if it had to be spooled (the upstream refuses it on replay;
counted in `capture_events_dropped{cause="rejected_by_upstream"}`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.core.errors import GatewayError
from gateway.edge.aliases import unprefixed
from gateway.edge.client_ip import ClientIpResolver
from gateway.http.responses import error_response, read_body, success_response
from gateway.metrics import serve as metrics
from gateway.sinks.base import Sink
from gateway.sinks.upstream import passthrough_record


def passthrough_handler(
    route: str, body_limit: int, sink: Sink, client_ip: ClientIpResolver, body_read_timeout: float, prefix: str = ""
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler of capture route family `route` registered under `prefix`, whose bodies may be up to
    `body_limit` bytes."""
    latency = metrics.HTTP_LATENCY.labels(route)

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            body = await read_body(request, body_limit, body_read_timeout)
            path = unprefixed(request.raw_path, prefix)
            await sink.deliver([passthrough_record(path, request.headers, client_ip(request), body)])
        except GatewayError as error:
            return error_response(request, route, error)
        response = success_response(request)
        metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
        latency.observe(time.perf_counter() - started)
        return response

    return handle
