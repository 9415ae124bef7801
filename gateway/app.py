"""Builds the aiohttp application: routes (under every prefix), the sink's lifecycle and health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.capture.decode import DecodeLimits
from gateway.capture.events import RecordOptions
from gateway.config import ServeSettings
from gateway.edge.setup import Edge
from gateway.edge.tokens import TokenPolicy
from gateway.privacy.policy import PrivacyPolicy
from gateway.proxy.passthrough import passthrough_handler
from gateway.proxy.routes import PROXY_FAMILIES, Proxy
from gateway.proxy.upstreams import Upstreams
from gateway.routes.capture import CaptureHandler, RouteSpec
from gateway.routes.health import liveness, metrics_endpoint, readiness_handler
from gateway.sinks.base import Sink
from gateway.sinks.factory import topics_from

SINK_KEY = web.AppKey("sink", Sink)


def capture_routes(settings: ServeSettings) -> list[RouteSpec]:
    return [
        RouteSpec("events", ("/e", "/i/v0/e", "/capture", "/track", "/engage"), settings.event_body_limit),
        RouteSpec("batch", ("/batch",), settings.batch_body_limit),
        RouteSpec("replay", ("/s",), settings.replay_body_limit, replay=True),
    ]


def route_families(settings: ServeSettings) -> list[str]:
    """Every route family this configuration can serve (`--routes` picks among them)."""
    names = [spec.name for spec in capture_routes(settings)]
    if Upstreams.from_settings(settings).enabled:
        names += PROXY_FAMILIES
    return names


def utc_now() -> datetime:
    return datetime.now(UTC)


def build_app(
    settings: ServeSettings, sink: Sink, clock: Callable[[], datetime] = utc_now
) -> web.Application:
    specs = capture_routes(settings)
    edge = Edge.from_settings(settings, route_families(settings))
    # Body limits are enforced per route by the capture handler; this only caps what aiohttp buffers.
    app = web.Application(
        client_max_size=max(settings.event_body_limit, settings.batch_body_limit, settings.replay_body_limit),
        middlewares=[edge.policy.middleware],
    )
    app[SINK_KEY] = sink
    rerouting = (
        timedelta(days=settings.historical_rerouting_days) if settings.historical_rerouting_days else None
    )
    handler = CaptureHandler(
        sink=sink,
        limits=DecodeLimits(settings.max_decompressed_bytes, settings.max_compression_ratio),
        options=RecordOptions(topics=topics_from(settings), historical_rerouting_after=rerouting),
        client_ip=edge.client_ip,
        tokens=TokenPolicy(settings.allow_tokens, settings.drop_events, edge.rate_limits.by_token),
        body_read_timeout=settings.body_read_timeout,
        clock=clock,
        privacy=PrivacyPolicy.from_settings(settings),
    )
    for prefix in ("", *settings.prefix):
        for spec in [spec for spec in specs if edge.serves(spec.name)]:
            if settings.upstream_passthrough:
                handle = passthrough_handler(spec, sink, edge.client_ip, settings.body_read_timeout)
            else:
                handle = handler.handler_for(spec)
            for path in spec.paths:
                edge.add_route(app.router, prefix + path, handle, spec.name)
                edge.add_route(app.router, prefix + path + "/", handle, spec.name)
    edge.add_probe(app.router, "/_liveness", liveness)
    edge.add_probe(app.router, "/_readiness", readiness_handler(sink))
    edge.add_management(app, "/metrics", metrics_endpoint)
    app.cleanup_ctx.append(_sink_lifecycle)
    app.cleanup_ctx.append(edge.lifecycle)
    upstreams = Upstreams.from_settings(settings)
    if upstreams.enabled:  # reverse-proxy mode: flags, /api, logs, assets (gateway/proxy)
        proxy = Proxy(settings, upstreams, edge)
        proxy.add_routes(app, edge, ("", *settings.prefix))
        app.cleanup_ctx.append(proxy.lifecycle)
    return app


async def _sink_lifecycle(app: web.Application) -> AsyncIterator[None]:
    sink = app[SINK_KEY]
    await sink.start()
    yield
    await sink.close()
