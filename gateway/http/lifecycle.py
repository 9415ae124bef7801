"""A worker's lifecycle: serve until SIGTERM/SIGINT, then drain without cutting off a request.

aiohttp's own shutdown (`web.run_app`) marks every connection as closing at once and from then on
ignores bytes still arriving (aio-libs/aiohttp#2298), so a request whose body is still uploading
stalls until the shutdown timeout cuts it off. Here a signal instead: stops listening, turns
readiness off and answers `Connection: close`, waits (up to `shutdown_timeout`) until no request is
in flight, and only then lets aiohttp close the idle connections and the app clean up (sink flush).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from gateway.core import stack_dump
from gateway.core.readiness import Readiness
from gateway.edge.listener import Listener
from gateway.http.dispatch import install_dispatcher
from gateway.settings import ServeSettings

POLL_S = 0.05
log = logging.getLogger("gateway.lifecycle")


class RequestCounts(Protocol):
    """Requests handled by this worker (gateway/edge/policy.py): the drain waits for and reports them."""

    in_flight: int
    finished: int  # requests answered since start


class Served(Protocol):
    """The edge (gateway/edge/setup.py): the TLS context to bind with (read once the app has started,
    so a SIGHUP meanwhile counts), and the listeners a SIGHUP switches to a new one."""

    ssl_context: ssl.SSLContext | None
    listeners: list[Listener]


class Drain:
    """Set once shutdown starts: readiness fails and responses close their connections."""

    def __init__(self) -> None:
        self.active = False

    def readiness(self) -> Readiness:
        if self.active:
            return Readiness(ready=False, degraded=True, detail="draining: shutting down")
        return Readiness(ready=True, degraded=False, detail="")


def runner_options(settings: ServeSettings) -> dict[str, Any]:
    """aiohttp server options of a listener (`web.AppRunner` keywords): request head limits and so on."""
    return {
        "access_log": None,
        "auto_decompress": False,  # capture inflates bodies itself, with size and ratio limits
        "max_line_size": settings.max_header_bytes,
        "max_field_size": settings.max_header_bytes,
        "max_headers": settings.max_headers,
        # aiohttp's keep-alive timer also runs from connect until a request head is complete, so it
        # bounds slow-header (slowloris) clients too; --body-read-timeout bounds slow bodies.
        "keepalive_timeout": settings.idle_timeout,
    }


async def serve_until_signalled(
    app: web.Application,
    *,
    host: str,
    port: int,
    reuse_port: bool,
    served: Served,
    shutdown_timeout: float,
    drain: Drain,
    requests: RequestCounts,
    options: dict[str, Any],
    on_serving: Callable[[], None] = lambda: None,
) -> None:
    """Start the app (sink, listeners), bind, call `on_serving`, and drain on SIGTERM/SIGINT.

    A listener that cannot bind raises StartupError (gateway/core/startup.py).
    """
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **options)
    listener = Listener(runner, host, port, reuse_port=reuse_port)
    try:
        await runner.setup()
        install_dispatcher(runner)
        await listener.start(served.ssl_context)
        served.listeners.append(listener)
        await listener.serve_with(served.ssl_context)  # in case a SIGHUP switched TLS while it bound
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        stack_dump.install(loop)
        on_serving()
        await stop.wait()
        drain.active = True
        listener.stop()  # no new connections
        started, finished_before = loop.time(), requests.finished
        log.info("draining: stopped accepting connections; waiting up to %gs for %d in-flight request(s)",
                 shutdown_timeout, requests.in_flight, extra={"in_flight": requests.in_flight})
        deadline = started + shutdown_timeout
        while requests.in_flight and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
        cut_off, finished = requests.in_flight, requests.finished - finished_before  # before cleanup cancels
    except BaseException:
        listener.stop()
        try:  # after a failed start: close whatever had started, and report the failure itself
            await runner.cleanup()
        except Exception:
            log.debug("cleanup after a failed start failed", exc_info=True)
        raise
    await runner.cleanup()  # idle connections closed, stragglers cancelled, app cleanup (sink flush)
    log.info("drained in %.2fs: %d request(s) finished, %d cut off; sink flushed and closed",
             loop.time() - started, finished, cut_off, extra={"finished": finished, "cut_off": cut_off})
