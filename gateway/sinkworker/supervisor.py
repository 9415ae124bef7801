"""`gateway sink --processes N`: N sink processes in one Kafka consumer group, supervised by the parent.

The rules are `gateway serve`'s for its workers: SIGTERM/SIGINT are forwarded (each child stores and
commits what it consumed, then exits); a child reports over a pipe once it runs, or why it could not
start, and a start-up failure stops the others with that error; a child that dies after it ran is
restarted with back-off (1 s doubling to 30 s, afresh once it ran 60 s), and a crash loop (5 crashes
within 60 s) stops the sink with one line. Exit status: the first failure's, else 1 if a child did
not stop cleanly (batches left unstored at its shutdown timeout), else 0.

`RestartPolicy` holds the back-off and crash-loop rules apart from the process handling, so that it
can be shared with serve's supervisor.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from gateway.core.startup import StartupError
from gateway.settings import SinkSettings

log = logging.getLogger("gateway.sink")

PR_SET_PDEATHSIG = 1
RUNNING = "running"
STOPPED_BY_SIGNAL = (-signal.SIGTERM, -signal.SIGINT)


@dataclass
class RestartPolicy:
    """When to restart a crashed child, and when crashes are a loop that must stop everything."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0  # a child that ran this long before dying starts its back-off afresh
    loop_crashes: int = 5
    loop_window_s: float = 60.0
    crashes: collections.deque[float] = field(default_factory=collections.deque)  # of any child

    def crashed(self, now: float, ran_for: float, delay: float) -> float | None:
        """The delay before restarting a child whose current back-off is `delay`; None: a crash loop."""
        self.crashes.append(now)
        while self.crashes[0] < now - self.loop_window_s:
            self.crashes.popleft()
        if len(self.crashes) >= self.loop_crashes:
            return None
        return self.first_delay_s if ran_for >= self.stable_after_s else delay

    def next_delay(self, delay: float) -> float:
        return min(delay * 2, self.max_delay_s)


@dataclass
class Child:
    """One child slot: its process (None while a restart is pending) and what it reported."""

    index: int
    process: BaseProcess | None = None
    reports: Connection | None = None
    running_since: float | None = None
    restart_at: float | None = None
    delay: float = 1.0


ChildMain = Callable[[SinkSettings, Callable[[], None]], int]


class SinkSupervisor:
    """Parent of `settings.processes` sink processes; `child_main(settings, on_running)` runs one."""

    def __init__(self, settings: SinkSettings, child_main: ChildMain, policy: RestartPolicy | None = None) -> None:
        self.settings = settings
        self.child_main = child_main
        self.policy = policy or RestartPolicy()
        self.context = multiprocessing.get_context("fork")
        self.children = [Child(index, delay=self.policy.first_delay_s) for index in range(settings.processes)]
        self.stopping = False
        self.failure: StartupError | None = None
        self.exit_code = 0

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, _frame: self._stop_all(signum))
        for child in self.children:
            self._spawn(child)
        log.info("sink running %d processes in consumer group %s", len(self.children), self.settings.group_id)
        while any(c.process is not None or c.restart_at is not None for c in self.children):
            self._wait()
            for child in self.children:
                self._read_reports(child)
                if child.process is not None and child.process.exitcode is not None:
                    self._exited(child)
                if child.restart_at is not None and time.monotonic() >= child.restart_at:
                    child.restart_at = None
                    if not self.stopping:
                        self._spawn(child)
        if self.failure is not None:
            raise self.failure
        return self.exit_code

    def _wait(self) -> None:
        handles: list[object] = []
        for child in self.children:
            if child.process is not None:
                handles.append(child.process.sentinel)
                if child.reports is not None:
                    handles.append(child.reports)
        due = [c.restart_at - time.monotonic() for c in self.children if c.restart_at is not None]
        wait(handles, timeout=max(0.0, min([0.5, *due])))

    def _read_reports(self, child: Child) -> None:
        if child.reports is None:
            return
        try:
            while child.reports.poll():
                report = child.reports.recv()
                if report == RUNNING:
                    child.running_since = time.monotonic()
                    pid = child.process and child.process.pid
                    log.info("sink process %d running (pid %s)", child.index, pid,
                             extra={"sink_process": child.index, "pid": pid})
                else:  # the child's StartupError
                    what, value, why, exit_code = report
                    self._fail(StartupError(what, value, why, exit_code=exit_code))
        except (EOFError, OSError):  # the child is gone; its exit is handled next
            child.reports.close()
            child.reports = None

    def _exited(self, child: Child) -> None:
        process = child.process
        assert process is not None and process.exitcode is not None
        self._read_reports(child)  # a start-up error sent just before the exit
        child.process = None
        if child.reports is not None:
            child.reports.close()
            child.reports = None
        ran_for = time.monotonic() - child.running_since if child.running_since is not None else None
        child.running_since = None
        code = process.exitcode
        if self.stopping:  # a child still starting dies of the forwarded signal itself: a clean stop
            if code not in (0, *STOPPED_BY_SIGNAL):
                log.error("sink process %d stopped with exit code %s", child.index, code)
                self.exit_code = self.exit_code or 1
        elif ran_for is None:
            self._fail(StartupError(f"sink process {child.index}", f"exit code {code}", "died while starting"))
        else:
            self._crashed(child, code, ran_for)

    def _crashed(self, child: Child, code: int, ran_for: float) -> None:
        now = time.monotonic()
        delay = self.policy.crashed(now, ran_for, child.delay)
        if delay is None:
            why = (f"crash loop: {len(self.policy.crashes)} crashes within {self.policy.loop_window_s:g} s; "
                   "sink stopped")
            self._fail(StartupError(f"sink process {child.index}", f"exit code {code}", why))
            return
        log.error("sink process %d died (exit code %s) after running %.1fs; restarting it in %gs",
                  child.index, code, ran_for, delay,
                  extra={"sink_process": child.index, "exit_code": code, "restart_in": delay})
        child.restart_at = now + delay
        child.delay = self.policy.next_delay(delay)

    def _fail(self, error: StartupError) -> None:
        """Stop every child; the sink exits with this (the first) error."""
        if self.failure is None and not self.stopping:
            self.failure = error
            self.exit_code = error.exit_code
        self._stop_all(signal.SIGTERM)

    def _spawn(self, child: Child) -> None:
        reports, report = self.context.Pipe(duplex=False)
        settings = replace(self.settings, processes=1)
        if settings.metrics_port:
            settings = replace(settings, metrics_port=settings.metrics_port + child.index)
        process = self.context.Process(
            target=_child_process, args=(self.child_main, settings, child.index, report),
            name=f"sink-{child.index}",
        )
        process.start()
        report.close()  # the child's end
        child.process, child.reports = process, reports

    def _stop_all(self, signum: int) -> None:
        self.stopping = True
        for child in self.children:
            child.restart_at = None
            if child.process is not None and child.process.pid and child.process.is_alive():
                os.kill(child.process.pid, signum)


def _child_process(child_main: ChildMain, settings: SinkSettings, index: int, report: Connection) -> None:
    # If the supervisor is killed outright, take the children down with it rather than orphan them.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGINT):  # not the supervisor's handler; the sink's own once running
        signal.signal(signum, signal.SIG_DFL)
    try:
        code = child_main(settings, lambda: report.send(RUNNING))
    except StartupError as exc:
        log.debug("sink process %d could not start", index, exc_info=True)
        report.send((exc.what, str(exc.value), exc.why, exc.exit_code))
        sys.exit(exc.exit_code)
    sys.exit(code)
