"""Runs `gateway serve`: one process, or N worker processes sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable

import uvloop

from gateway.app import DRAIN_KEY, EDGE_KEY, build_app
from gateway.lifecycle import runner_options, serve_until_signalled
from gateway.logs import configure_logging
from gateway.metrics_multiproc import process_exited
from gateway.reload import Reloader
from gateway.settings import ServeSettings
from gateway.settings.fields import warn_unknown_env
from gateway.sinks.factory import build_sink

log = logging.getLogger("gateway.serve")

PR_SET_PDEATHSIG = 1
RESTART_DELAY_SECONDS = 1.0


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
            options=runner_options(settings),
        )
    )


def serve(settings: ServeSettings, load: Loader | None = None) -> int:
    """Run the workers until they exit; returns the first non-zero worker exit code, else 0."""
    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_env(os.environ)
    log.info("gateway listening on %s:%d with %d worker(s)", settings.host, settings.port, settings.workers)
    if settings.workers == 1:
        run_worker(settings, 0, load)
        return 0
    return Supervisor(settings, load).run()


class Supervisor:
    """Parent of N workers: forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies unexpectedly,
    and exits when all have stopped."""

    def __init__(self, settings: ServeSettings, load: Loader | None) -> None:
        self.settings = settings
        self.load = load
        self.context = multiprocessing.get_context("fork")
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}
        self.stopping = False
        self.exit_code = 0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        for index in range(self.settings.workers):
            self._spawn(index)
        while self.workers:
            for index, process in list(self.workers.items()):
                process.join(0.2)
                if process.exitcode is None:
                    continue
                del self.workers[index]
                process_exited(process.pid)
                if self.stopping:
                    self.exit_code = self.exit_code or process.exitcode
                else:
                    log.error("worker %d exited with %s; restarting it", index, process.exitcode)
                    time.sleep(RESTART_DELAY_SECONDS)
                    self._spawn(index)
        return self.exit_code

    def _spawn(self, index: int) -> None:
        process = self.context.Process(
            target=_worker_main, args=(self.settings, index, self.load), name=f"worker-{index}"
        )
        process.start()
        self.workers[index] = process

    def _forward(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for process in self.workers.values():
            if process.pid and process.is_alive():
                os.kill(process.pid, signum)


def _worker_main(settings: ServeSettings, worker: int, load: Loader | None) -> None:
    # If the supervisor is killed outright, take the workers down with it rather than orphan them.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    run_worker(settings, worker, load)
