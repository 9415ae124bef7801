"""Liveness, readiness and Prometheus metrics: cheap handlers that never touch the sink's hot path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.core.readiness import Readiness
from gateway.metrics.export import MetricsExporter

Handler = Callable[[web.Request], Awaitable[web.Response]]
ReadinessCheck = Callable[[], Readiness]


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def combined(states: Sequence[Readiness]) -> Readiness:
    """Ready only when every component is; degraded when any is."""
    return Readiness(
        ready=all(s.ready for s in states),
        degraded=any(s.degraded for s in states),
        detail="; ".join(s.detail for s in states if s.detail),
    )


def readiness_handler(checks: Sequence[ReadinessCheck], flags_served: bool = False) -> Handler:
    """/_readiness: 200 while ready (status ok or degraded), 503 to take the instance out of rotation.

    `flags_served` tells `gateway check` whether to evaluate a flag (only with an upstream).
    """

    async def readiness(request: web.Request) -> web.Response:
        state = combined([check() for check in checks])
        body = {
            "status": "degraded" if state.degraded else "ok",
            "ready": state.ready,
            "detail": state.detail,
            "flags_served": flags_served,
        }
        return web.json_response(body, status=200 if state.ready else 503)

    return readiness


def metrics_handler(exporter: MetricsExporter) -> Handler:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exporter.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
