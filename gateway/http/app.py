"""Builds the aiohttp application from the built components: routes (under every prefix), the sink's
lifecycle and health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from gateway.capture.decode import DecodeLimits
from gateway.capture.events import RecordOptions
from gateway.core.gc_tuning import settle_gc
from gateway.edge.headers import omit_server_header
from gateway.edge.setup import Edge
from gateway.gdpr.http import GdprEndpoints
from gateway.http.capture import CaptureHandler
from gateway.http.components import Components, capture_routes
from gateway.http.dispatch import FRONT_KEY, Front
from gateway.http.health import liveness, metrics_handler, readiness_handler
from gateway.http.lifecycle import Drain
from gateway.metrics import serve as metrics
from gateway.metrics.build import record_build
from gateway.metrics.export import GaugeSampler, MetricsExporter
from gateway.proxy.passthrough import passthrough_handler
from gateway.proxy.routes import Proxy
from gateway.settings import ServeSettings
from gateway.sinks.base import Sink
from gateway.sinks.factory import forwards_only, topics_from
from gateway.spool.collector import SpoolCollector

SINK_KEY = web.AppKey("sink", Sink)
EDGE_KEY = web.AppKey("edge", Edge)  # for the SIGHUP reloader (gateway/reload.py)
DRAIN_KEY = web.AppKey("drain", Drain)  # for the worker lifecycle (gateway/http/lifecycle.py)


def utc_now() -> datetime:
    return datetime.now(UTC)


def build_app(
    settings: ServeSettings, components: Components, sink: Sink, clock: Callable[[], datetime] = utc_now
) -> web.Application:
    """The app of one worker: `components` from `build_components(settings)`, the sink built from them."""
    specs = capture_routes(settings)
    edge = components.edge
    drain = Drain()  # set on SIGTERM by gateway.http.lifecycle
    front = Front(edge.policy, drain)
    # Body limits are enforced per route by the capture handler; this only caps what aiohttp buffers.
    app = web.Application(
        client_max_size=max(settings.event_body_limit, settings.batch_body_limit, settings.replay_body_limit),
        middlewares=[front.middleware],
    )
    app.on_response_prepare.append(omit_server_header)
    app[SINK_KEY] = sink
    rerouting = (
        timedelta(days=settings.historical_rerouting_days) if settings.historical_rerouting_days else None
    )
    handler = CaptureHandler(
        sink=sink,
        limits=DecodeLimits(settings.max_decompressed_bytes, settings.max_compression_ratio),
        options=RecordOptions(topics=topics_from(settings), historical_rerouting_after=rerouting,
                              upstream=forwards_only(settings, components.upstreams)),
        client_ip=edge.client_ip,
        tokens=edge.tokens,
        body_read_timeout=settings.body_read_timeout,
        clock=clock,
        privacy=components.privacy,
        forward_as_received=settings.upstream_forward_as_received,
    )
    for prefix in ("", *settings.prefix):
        for spec in [spec for spec in specs if edge.serves(spec.name)]:
            if settings.upstream_passthrough:
                handle = passthrough_handler(
                    spec.name, spec.body_limit, sink, edge.client_ip, settings.body_read_timeout, prefix
                )
            else:
                handle = handler.handler_for(spec, prefix)
            for path in (f"{prefix}{path}{slash}" for path in spec.paths for slash in ("", "/")):
                front.serve_directly(path, edge.add_route(app.router, path, handle, spec.name), handle)
    # --- operations: probes, /metrics and sampled per-worker gauges (gateway/metrics/export.py) ---
    sampler = GaugeSampler()
    sampler.add(metrics.IN_FLIGHT, lambda: edge.policy.in_flight)
    spools = SpoolCollector(settings.data_dir, settings.spool_max_bytes)
    readiness_checks = [sink.readiness, drain.readiness]  # the upstream proxy's check joins this list
    ready = readiness_handler(readiness_checks, edge.serves("flags"))
    for prefix in ("", *settings.prefix):  # under every mount point, as `gateway check URL/prefix` reads them
        edge.add_probe(app.router, f"{prefix}/_liveness", liveness)
        edge.add_probe(app.router, f"{prefix}/_readiness", ready)
    record_build()
    edge.add_management(app, "/metrics", metrics_handler(MetricsExporter([spools], sampler)))
    GdprEndpoints(settings, edge.client_ip, components.gdpr_audit_key, components.keyring).mount(app, edge)
    app.cleanup_ctx.append(sampler.lifecycle)
    app[EDGE_KEY] = edge
    app[DRAIN_KEY] = drain
    app[FRONT_KEY] = front
    # --- end operations ---
    app.cleanup_ctx.append(_sink_lifecycle)
    app.cleanup_ctx.append(edge.lifecycle)
    app.on_startup.append(_settle_gc)
    if components.upstreams.enabled:  # reverse-proxy mode: flags, /api, logs, assets (gateway/proxy)
        proxy = Proxy(settings, components.upstreams, edge, components.flags_api_key)
        proxy.add_routes(app, edge, ("", *settings.prefix))
        app.cleanup_ctx.append(proxy.lifecycle)
    return app


async def _settle_gc(app: web.Application) -> None:
    settle_gc()


async def _sink_lifecycle(app: web.Application) -> AsyncIterator[None]:
    sink = app[SINK_KEY]
    await sink.start()
    yield
    await sink.close()
