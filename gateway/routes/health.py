"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.sinks.base import Sink


async def liveness(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def readiness_handler(sink: Sink):
    async def readiness(request: web.Request) -> web.Response:
        state = sink.readiness()
        body = {
            "status": "degraded" if state.degraded else "ok",
            "ready": state.ready,
            "detail": state.detail,
        }
        return web.json_response(body, status=200 if state.ready else 503)

    return readiness


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
