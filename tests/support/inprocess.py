"""Run the real gateway app in a background thread (own event loop) for HTTP-level tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import uvloop
from aiohttp import web

from gateway.http.app import EDGE_KEY, build_app, utc_now
from gateway.http.components import build_components
from gateway.http.dispatch import install_dispatcher
from gateway.http.lifecycle import runner_options
from gateway.settings import ServeSettings
from gateway.sinks.base import Sink
from gateway.sinks.factory import build_sink


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InProcessGateway:
    """Starts `build_app` on a free loopback port; `stop()` shuts it down gracefully (sink flushed)."""

    def __init__(
        self,
        settings: ServeSettings,
        sink: Sink | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.port = free_port()
        self.settings = settings
        self.components = build_components(settings)
        self.sink = sink or build_sink(settings, 0, self.components.upstreams, self.components.keyring)
        self.clock = clock
        self.url = f"{'https' if settings.tls_cert else 'http'}://127.0.0.1:{self.port}"
        self._loop = uvloop.new_event_loop()  # as `gateway serve` runs (gateway/http/worker.py)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    def start(self) -> InProcessGateway:
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = build_app(self.settings, self.components, self.sink, clock=self.clock)
        self._runner = web.AppRunner(app, **runner_options(self.settings))
        await self._runner.setup()
        install_dispatcher(self._runner)  # as `gateway serve` runs it (gateway/http/lifecycle.py)
        self.edge = app[EDGE_KEY]  # its SSL context is the one SIGHUP reloads
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.edge.ssl_context).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> InProcessGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_for(data_dir: Path, **overrides: object) -> ServeSettings:
    return ServeSettings(data_dir=data_dir, **overrides).validate()
