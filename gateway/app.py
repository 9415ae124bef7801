"""Builds the aiohttp application: routes (under every prefix), the sink's lifecycle and health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.capture.decode import DecodeLimits
from gateway.capture.events import RecordOptions
from gateway.config import ServeSettings
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


def utc_now() -> datetime:
    return datetime.now(UTC)


def build_app(
    settings: ServeSettings, sink: Sink, clock: Callable[[], datetime] = utc_now
) -> web.Application:
    # Body limits are enforced per route by the capture handler; this only caps what aiohttp buffers.
    app = web.Application(
        client_max_size=max(settings.event_body_limit, settings.batch_body_limit, settings.replay_body_limit)
    )
    app[SINK_KEY] = sink
    rerouting = (
        timedelta(days=settings.historical_rerouting_days) if settings.historical_rerouting_days else None
    )
    handler = CaptureHandler(
        sink=sink,
        limits=DecodeLimits(settings.max_decompressed_bytes, settings.max_compression_ratio),
        options=RecordOptions(topics=topics_from(settings), historical_rerouting_after=rerouting),
        trusted_proxy_hops=settings.trusted_proxy_hops,
        clock=clock,
    )
    for prefix in ("", *settings.prefix):
        for spec in capture_routes(settings):
            handle = handler.handler_for(spec)
            for path in spec.paths:
                app.router.add_route("*", prefix + path, handle)
                app.router.add_route("*", prefix + path + "/", handle)
    app.router.add_get("/_liveness", liveness)
    app.router.add_get("/_readiness", readiness_handler(sink))
    app.router.add_get("/metrics", metrics_endpoint)
    app.cleanup_ctx.append(_sink_lifecycle)
    return app


async def _sink_lifecycle(app: web.Application) -> AsyncIterator[None]:
    sink = app[SINK_KEY]
    await sink.start()
    yield
    await sink.close()
