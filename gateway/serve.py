"""Runs `gateway serve`: one process, or N worker processes sharing the port with SO_REUSEPORT."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time

import uvloop
from aiohttp import web

from gateway.app import build_app
from gateway.config import ServeSettings
from gateway.edge.tls import server_ssl_context
from gateway.sinks.factory import build_sink

log = logging.getLogger("gateway.serve")

PR_SET_PDEATHSIG = 1
RESTART_DELAY_SECONDS = 1.0


def run_worker(settings: ServeSettings, worker: int) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting, finish in-flight requests and flush the sink."""
    app = build_app(settings, build_sink(settings, worker))
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=settings.workers > 1,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
        auto_decompress=False,  # we inflate ourselves, with size and ratio limits
        ssl_context=server_ssl_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None,
    )


def serve(settings: ServeSettings) -> None:
    log.info("gateway listening on %s:%d with %d worker(s)", settings.host, settings.port, settings.workers)
    if settings.workers == 1:
        run_worker(settings, 0)
        return
    Supervisor(settings).run()


class Supervisor:
    """Parent of N workers: forwards SIGTERM/SIGINT, restarts a worker that dies, exits when all stopped."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("fork")
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}
        self.stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        for index in range(self.settings.workers):
            self._spawn(index)
        while self.workers:
            for index, process in list(self.workers.items()):
                process.join(0.2)
                if process.exitcode is None:
                    continue
                del self.workers[index]
                if not self.stopping:
                    log.error("worker %d exited with %s; restarting it", index, process.exitcode)
                    time.sleep(RESTART_DELAY_SECONDS)
                    self._spawn(index)

    def _spawn(self, index: int) -> None:
        process = self.context.Process(target=_worker_main, args=(self.settings, index), name=f"worker-{index}")
        process.start()
        self.workers[index] = process

    def _forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for process in self.workers.values():
            if process.pid and process.is_alive():
                os.kill(process.pid, signum)


def _worker_main(settings: ServeSettings, worker: int) -> None:
    # If the supervisor is killed outright, take the workers down with it rather than orphan them.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    run_worker(settings, worker)
