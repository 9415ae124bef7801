"""Runs `gateway serve`: one process, or N worker processes sharing the port with SO_REUSEPORT.

The components built at start (gateway/http/components.py) are every worker's first; a worker
restarted after a crash builds its own afresh (re-reading certificate and key files, as a start does),
from the settings as the last SIGHUP applied them.

Start-up failures (a port in use, an unusable --data-dir, a locked spool) are StartupErrors
(gateway/core/startup.py), printed by gateway.cli as one line. The start-up line is logged only once
every worker's socket is bound. A worker reports over a pipe that it serves, or why it could not
start: a start-up failure stops the gateway with that worker's error; only a worker that dies after
it served is restarted, with back-off, and a crash loop stops the gateway (gateway/child_processes.py,
shared with `gateway sink --processes N`).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gateway.child_processes import Child, ChildSupervisor
from gateway.core.startup import CONFIG_EXIT, StartupError
from gateway.edge.setup import plan_reload
from gateway.http.announce import announce
from gateway.http.components import Components
from gateway.http.worker import Loader, run_worker
from gateway.logs import configure_logging
from gateway.metrics.multiproc import process_exited
from gateway.settings import ConfigError, ServeSettings
from gateway.settings.fields import warn_unknown_env

log = logging.getLogger("gateway.serve")


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
    return WorkerSupervisor(settings, components, load).run()


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


class WorkerSupervisor(ChildSupervisor):
    """Parent of `settings.workers` workers (gateway/child_processes.py); also passes SIGHUP (reload) and
    SIGUSR2 (each worker logs its stacks, gateway/core/stack_dump.py) on, and logs the start-up line once
    every worker serves."""

    log = log
    child_name = process_name = "worker"
    group_name = "gateway"
    ready_word = "serving"
    log_key = "worker"
    passed_on = (signal.SIGHUP, signal.SIGUSR2)

    def __init__(self, settings: ServeSettings, components: Components, load: Loader | None) -> None:
        super().__init__(settings.workers)
        self.settings = settings
        self.components = components
        self.load = load
        self.announced = False

    def run_child(self, index: int, first_start: bool, on_ready: Callable[[], None]) -> None:
        # The first start uses the components built at start; a restart builds its own.
        run_worker(self.settings, self.components if first_start else None, index, self.load, on_serving=on_ready)

    def ready(self, child: Child) -> None:
        if self.announced:
            log.info("worker %d serving again", child.index,
                     extra={"worker": child.index, "pid": child.process and child.process.pid})
        elif all(c.ready_since is not None for c in self.children):
            self.announced = True
            announce(self.settings, self.components.upstreams)

    def reaped(self, pid: int) -> None:
        process_exited(pid)

    def signalled(self, signum: int) -> None:
        """SIGHUP: the workers reload themselves; a worker restarted later starts with what they applied
        (TLS switched on included), not with the settings of the start."""
        if signum != signal.SIGHUP or self.load is None:
            return
        try:
            new = self.load().settings
        except ConfigError:  # each worker logs and counts it
            return
        self.settings = replace(plan_reload(self.settings, new).settings, log_level=new.log_level)
