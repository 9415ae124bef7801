"""Runs `gateway serve`: one process, or N worker processes sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable

import uvloop

from gateway.app import DRAIN_KEY, EDGE_KEY, build_app
from gateway.config import ServeSettings
from gateway.lifecycle import serve_until_signalled
from gateway.logs import configure_logging
from gateway.metrics_multiproc import process_exited
from gateway.reload import Reloader
from gateway.sinks.factory import build_sink

log = logging.getLogger("gateway.serve")


Loader = Callable[[], ServeSettings]


def run_worker(settings: ServeSettings, worker: int, load: Loader | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, finish in-flight requests and flush the sink
    (gateway/lifecycle.py).

    With `load`, SIGHUP re-reads the configuration and applies policy settings live (gateway/reload.py).
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reloader's handler is installed
    app = build_app(settings, build_sink(settings, worker))
    if load is not None:
        app.cleanup_ctx.append(Reloader(settings, load, app[EDGE_KEY]).on_sighup)
    edge = app[EDGE_KEY]
    uvloop.run(
        serve_until_signalled(
            app,
            host=settings.host,
            port=settings.port,
            reuse_port=settings.workers > 1,
            ssl_context=edge.ssl_context,
            shutdown_timeout=settings.shutdown_timeout,
            drain=app[DRAIN_KEY],
            in_flight=lambda: edge.policy.in_flight,
        )
    )


def serve(settings: ServeSettings, load: Loader | None = None) -> int:
    """Run the workers until they exit; returns the first non-zero worker exit code, else 0."""
    configure_logging(settings.log_level, settings.log_format)
    log.info("gateway listening on %s:%d with %d worker(s)", settings.host, settings.port, settings.workers)
    if settings.workers == 1:
        run_worker(settings, 0, load)
        return 0
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=run_worker, args=(settings, i, load), name=f"worker-{i}")
        for i in range(settings.workers)
    ]
    for process in workers:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in workers:
            if process.pid and process.is_alive():
                os.kill(process.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for process in workers:
        process.join()
        process_exited(process.pid)
    return next((p.exitcode for p in workers if p.exitcode), 0)
