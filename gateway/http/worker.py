"""One worker process of `gateway serve`: its sink and app from the built components, served until a
signal drains it."""

from __future__ import annotations

import signal
from collections.abc import Callable

import uvloop

from gateway.edge.setup import Edge
from gateway.embedded import SpoolFillWatch
from gateway.http.app import DRAIN_KEY, EDGE_KEY, build_app
from gateway.http.components import Components, build_components
from gateway.http.lifecycle import runner_options, serve_until_signalled
from gateway.reload import Reloader
from gateway.settings import ServeSettings
from gateway.sinks.factory import build_sink
from gateway.sinks.spool import SpoolSink

Loader = Callable[[], Edge]  # the edge of the components built from the configuration as it now reads


def run_worker(
    settings: ServeSettings,
    components: Components | None,
    worker: int,
    load: Loader | None = None,
    on_serving: Callable[[], None] = lambda: None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, finish in-flight requests and flush the sink
    (gateway/http/lifecycle.py). `on_serving` is called once the socket is bound.

    `components`: built from `settings` at start; None to build them here (a restarted worker).
    With `load`, SIGHUP re-reads the configuration and applies policy settings live (gateway/reload.py).
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reloader's handler is installed
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # not the supervisor's handler; the stack dump's once serving
    if components is None:
        components = build_components(settings)
    sink = build_sink(settings, worker, components.upstreams, components.keyring)
    app = build_app(settings, components, sink)
    if load is not None:
        app.cleanup_ctx.append(Reloader(settings, load, app[EDGE_KEY]).on_sighup)
    if isinstance(sink, SpoolSink):  # embedded mode
        app.cleanup_ctx.append(SpoolFillWatch(sink.spool, settings.data_dir).lifecycle)
    edge = app[EDGE_KEY]
    uvloop.run(
        serve_until_signalled(
            app,
            host=settings.host,
            port=settings.port,
            reuse_port=settings.workers > 1,
            served=edge,
            shutdown_timeout=settings.shutdown_timeout,
            drain=app[DRAIN_KEY],
            requests=edge.policy,
            options=runner_options(settings),
            on_serving=on_serving,
        )
    )
