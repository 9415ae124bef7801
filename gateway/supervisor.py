"""Runs `gateway serve`: one process, or N worker processes sharing the port with SO_REUSEPORT.

The components built at start (gateway/http/components.py) are every worker's first; a worker
restarted after a crash builds its own afresh (re-reading certificate and key files, as a start does).

Start-up failures (a port in use, an unusable --data-dir, a locked spool) are StartupErrors
(gateway/core/startup.py), printed by gateway.cli as one line. The start-up line is logged only once
every worker's socket is bound. A worker reports over a pipe that it serves, or why it could not
start: a start-up failure stops the gateway with that worker's error; only a worker that dies after
it served is restarted, with back-off, and a crash loop stops the gateway.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.http.announce import announce
from gateway.http.components import Components
from gateway.http.worker import Loader, run_worker
from gateway.logs import configure_logging
from gateway.metrics_multiproc import process_exited
from gateway.settings import ServeSettings
from gateway.settings.fields import warn_unknown_env

log = logging.getLogger("gateway.serve")

PR_SET_PDEATHSIG = 1
FIRST_RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
# A worker that served this long before dying starts its back-off afresh.
STABLE_AFTER_S = 60.0
CRASH_LOOP_CRASHES = 5
CRASH_LOOP_WINDOW_S = 60.0
SERVING = "serving"


def serve(settings: ServeSettings, components: Components, load: Loader | None = None) -> int:
    """Run the workers until they exit; returns the first non-zero worker exit code, else 0.
    `components`: `build_components(settings)`.

    Raises StartupError when the gateway cannot start (or a crash loop stops it)."""
    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_env(os.environ)
    prepare_data_dir(settings.data_dir)
    if settings.workers == 1:
        run_worker(settings, components, 0, load, on_serving=lambda: announce(settings, components.upstreams))
        return 0
    return Supervisor(settings, components, load).run()


def prepare_data_dir(data_dir: Path) -> None:
    """Create --data-dir and prove it writable, so a bad one is named before anything starts."""
    if data_dir.exists() and not data_dir.is_dir():
        raise StartupError("--data-dir", data_dir, "not a directory", exit_code=CONFIG_EXIT)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        code = CONFIG_EXIT if exc.errno in (errno.ENOTDIR, errno.EEXIST) else 1
        raise StartupError("--data-dir", data_dir, f"cannot be created: {_reason(exc)}", exit_code=code) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise StartupError("--data-dir", data_dir, f"not writable: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


@dataclass
class Worker:
    """One worker slot: its process (None while a restart is pending) and what it reported."""

    index: int
    process: BaseProcess | None = None
    reports: Connection | None = None
    serving_since: float | None = None
    started: bool = False  # once: a restart builds its own components
    restart_at: float | None = None
    delay: float = FIRST_RESTART_DELAY_S


class Supervisor:
    """Parent of N workers: forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies after it served,
    stops the gateway when one fails to start or crash-loops, and exits when all have stopped."""

    def __init__(self, settings: ServeSettings, components: Components, load: Loader | None) -> None:
        self.settings = settings
        self.components = components
        self.load = load
        self.context = multiprocessing.get_context("fork")
        self.workers = [Worker(index) for index in range(settings.workers)]
        self.stopping = False
        self.announced = False
        self.failure: StartupError | None = None
        self.exit_code = 0
        self.crashes: collections.deque[float] = collections.deque()  # of any worker, within the window

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        for worker in self.workers:
            self._spawn(worker)
        while any(w.process is not None or w.restart_at is not None for w in self.workers):
            self._wait()
            for worker in self.workers:
                self._read_reports(worker)
                if worker.process is not None and worker.process.exitcode is not None:
                    self._exited(worker)
                if worker.restart_at is not None and time.monotonic() >= worker.restart_at:
                    worker.restart_at = None
                    if not self.stopping:
                        self._spawn(worker)
            if not self.announced and all(w.serving_since is not None for w in self.workers):
                self.announced = True
                announce(self.settings, self.components.upstreams)
        if self.failure is not None:
            raise self.failure
        return self.exit_code

    def _wait(self) -> None:
        handles: list[object] = []
        for worker in self.workers:
            if worker.process is not None:
                handles.append(worker.process.sentinel)
                if worker.reports is not None:
                    handles.append(worker.reports)
        due = [w.restart_at - time.monotonic() for w in self.workers if w.restart_at is not None]
        wait(handles, timeout=max(0.0, min([0.5, *due])))

    def _read_reports(self, worker: Worker) -> None:
        if worker.reports is None:
            return
        try:
            while worker.reports.poll():
                report = worker.reports.recv()
                if report == SERVING:
                    worker.serving_since = time.monotonic()
                    if self.announced:
                        log.info("worker %d serving again", worker.index,
                                 extra={"worker": worker.index, "pid": worker.process and worker.process.pid})
                else:  # the worker's StartupError
                    what, value, why, exit_code = report
                    self._fail(StartupError(what, value, why, exit_code=exit_code))
        except (EOFError, OSError):  # the worker is gone; its exit is handled next
            worker.reports.close()
            worker.reports = None

    def _exited(self, worker: Worker) -> None:
        process = worker.process
        assert process is not None and process.exitcode is not None
        self._read_reports(worker)  # a start-up error sent just before the exit
        worker.process = None
        if worker.reports is not None:
            worker.reports.close()
            worker.reports = None
        process_exited(process.pid)
        served_for = time.monotonic() - worker.serving_since if worker.serving_since is not None else None
        worker.serving_since = None
        code = process.exitcode
        if self.stopping:  # a worker still starting dies of the forwarded signal itself: a clean stop
            self.exit_code = self.exit_code or (0 if code in (-signal.SIGTERM, -signal.SIGINT) else code)
        elif served_for is None:
            self._fail(StartupError(f"worker {worker.index}", f"exit code {code}", "died while starting"))
        else:
            self._crashed(worker, code, served_for)

    def _crashed(self, worker: Worker, code: int, served_for: float) -> None:
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes[0] < now - CRASH_LOOP_WINDOW_S:
            self.crashes.popleft()
        if len(self.crashes) >= CRASH_LOOP_CRASHES:
            why = f"crash loop: {len(self.crashes)} crashes within {CRASH_LOOP_WINDOW_S:g} s; gateway stopped"
            self._fail(StartupError(f"worker {worker.index}", f"exit code {code}", why))
            return
        if served_for >= STABLE_AFTER_S:
            worker.delay = FIRST_RESTART_DELAY_S
        log.error("worker %d died (exit code %s) after serving %.1fs; restarting it in %gs",
                  worker.index, code, served_for, worker.delay,
                  extra={"worker": worker.index, "exit_code": code, "restart_in": worker.delay})
        worker.restart_at = now + worker.delay
        worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY_S)

    def _fail(self, error: StartupError) -> None:
        """Stop every worker; the gateway exits with this (the first) error."""
        if self.failure is None and not self.stopping:
            self.failure = error
            self.exit_code = error.exit_code
        self._stop_all(signal.SIGTERM)

    def _spawn(self, worker: Worker) -> None:
        reports, report = self.context.Pipe(duplex=False)
        components = None if worker.started else self.components
        worker.started = True
        process = self.context.Process(
            target=_worker_main, args=(self.settings, components, worker.index, self.load, report),
            name=f"worker-{worker.index}",
        )
        process.start()
        report.close()  # the child's end
        worker.process, worker.reports = process, reports

    def _forward(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            for worker in self.workers:
                if worker.process is not None and worker.process.pid and worker.process.is_alive():
                    os.kill(worker.process.pid, signum)
        else:
            self._stop_all(signum)

    def _stop_all(self, signum: int) -> None:
        self.stopping = True
        for worker in self.workers:
            worker.restart_at = None
            if worker.process is not None and worker.process.pid and worker.process.is_alive():
                os.kill(worker.process.pid, signum)


def _worker_main(
    settings: ServeSettings, components: Components | None, worker: int, load: Loader | None, report: Connection
) -> None:
    # If the supervisor is killed outright, take the workers down with it rather than orphan them.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGINT):  # not the supervisor's handler; the worker's own once serving
        signal.signal(signum, signal.SIG_DFL)
    try:
        run_worker(settings, components, worker, load, on_serving=lambda: report.send(SERVING))
    except StartupError as exc:
        log.debug("worker %d could not start", worker, exc_info=True)
        report.send((exc.what, str(exc.value), exc.why, exc.exit_code))
        sys.exit(exc.exit_code)
