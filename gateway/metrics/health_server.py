"""A worker process's own HTTP port (the sink's `--metrics-port`, the recordings sink's
`--recordings-http-port`): `/ready` and `/metrics`, answered on the worker's event loop, so an answer
also says the loop runs (a liveness probe asks `/metrics`)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.core.readiness import Health
from gateway.metrics.build import record_build


async def serve_health(port: int, health: Health) -> web.AppRunner:
    """Listen on `port` (all interfaces) until the returned runner is cleaned up."""

    async def ready(_: web.Request) -> web.Response:
        body = {"ready": health.ready, "reason": health.reason or None}
        return web.json_response(body, status=200 if health.ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    record_build()
    app = web.Application()
    app.add_routes([web.get("/ready", ready), web.get("/metrics", metrics)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
