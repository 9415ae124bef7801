"""N forked children under a supervising parent: `gateway serve --workers N` and `gateway sink --processes N`.

The rules: SIGTERM/SIGINT are forwarded to every child; a child reports over a pipe once it is ready
(serving, running), or why it could not start, and a start-up failure stops the others with that
StartupError; a child that dies after it was ready is restarted with back-off (1 s doubling to 30 s,
afresh once it ran 60 s), and a crash loop stops the group with one line: 5 crashes in a row (of any
child) each within 60 s of becoming ready, with no crash of a child that had run longer in between.
Counting lives rather than wall-clock time makes the rule independent of how long children take to
start and of the back-off itself (with a 60 s wall-clock window, children that start slowly never
added up to a loop). A child dies with the parent (PR_SET_PDEATHSIG) rather than be orphaned.

A subclass says what a child runs (`run_child`) and names things in its messages.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from gateway.core.startup import StartupError

PR_SET_PDEATHSIG = 1
READY = "ready"
STOPPED_BY_SIGNAL = (-signal.SIGTERM, -signal.SIGINT)


@dataclass
class RestartPolicy:
    """When to restart a crashed child, and when crashes are a loop that must stop everything."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0  # a child that ran this long before dying starts its back-off afresh
    loop_crashes: int = 5
    crashes: int = 0  # crashes in a row, of any child, soon after it became ready

    def crashed(self, ran_for: float, delay: float) -> float | None:
        """The delay before restarting a child whose current back-off is `delay`; None: a crash loop."""
        if ran_for >= self.stable_after_s:
            self.crashes = 0
            return self.first_delay_s
        self.crashes += 1
        return None if self.crashes >= self.loop_crashes else delay

    def next_delay(self, delay: float) -> float:
        return min(delay * 2, self.max_delay_s)


@dataclass
class Child:
    """One child slot: its process (None while a restart is pending) and what it reported."""

    index: int
    process: BaseProcess | None = None
    reports: Connection | None = None
    ready_since: float | None = None
    restart_at: float | None = None
    delay: float = 1.0
    starts: int = 0


class ChildSupervisor:
    """Parent of `count` children; exits when all have stopped.

    `run` returns `exit_code` (see `stopped`) or raises the first failure's StartupError."""

    log = logging.getLogger("gateway")
    child_name = "child"  # in messages: "<child_name> 2 died ..."
    process_name = "child"  # the processes' names: "<process_name>-2"
    group_name = "group"  # "crash loop: ...; <group_name> stopped"
    ready_word = "running"  # "died (exit code -9) after <ready_word> 3.0s"
    log_key = "child"  # the child's index in log records' extra fields
    passed_on: tuple[signal.Signals, ...] = ()  # signals passed on to the children without stopping them

    def __init__(self, count: int, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.context = multiprocessing.get_context("fork")
        self.children = [Child(index, delay=self.policy.first_delay_s) for index in range(count)]
        self.stopping = False
        self.failure: StartupError | None = None
        self.exit_code = 0

    # --- what a subclass says ---

    def run_child(self, index: int, first_start: bool, on_ready: Callable[[], None]) -> int | None:
        """Runs in the child process: the child's work, calling `on_ready` once it is ready; its exit code."""
        raise NotImplementedError

    def started(self) -> None:
        """Every child is spawned."""

    def ready(self, child: Child) -> None:
        """`child` reported it is ready."""

    def stopped(self, child: Child, code: int) -> None:
        """`child` exited with `code` while the group stops: by default the first unclean code is the exit code."""
        self.exit_code = self.exit_code or (0 if code in STOPPED_BY_SIGNAL else code)

    def reaped(self, pid: int) -> None:
        """The process `pid` of a child has exited."""

    def signalled(self, signum: int) -> None:
        """The parent received `signum` of `passed_on`, before passing it on to the children."""

    # --- the supervision ---

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, _frame: self._stop_all(signum))
        for signum in self.passed_on:
            signal.signal(signum, lambda signum, _frame: self._pass_on(signum))
        for child in self.children:
            self._spawn(child)
        self.started()
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
                if report == READY:
                    child.ready_since = time.monotonic()
                    self.ready(child)
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
        if process.pid is not None:
            self.reaped(process.pid)
        ran_for = time.monotonic() - child.ready_since if child.ready_since is not None else None
        child.ready_since = None
        code = process.exitcode
        if self.stopping:  # a child still starting dies of the forwarded signal itself: a clean stop
            self.stopped(child, code)
        elif ran_for is None:
            self._fail(StartupError(f"{self.child_name} {child.index}", f"exit code {code}", "died while starting"))
        else:
            self._crashed(child, code, ran_for)

    def _crashed(self, child: Child, code: int, ran_for: float) -> None:
        now = time.monotonic()
        delay = self.policy.crashed(ran_for, child.delay)
        if delay is None:
            why = (f"crash loop: {self.policy.crashes} crashes in a row, each within "
                   f"{self.policy.stable_after_s:g} s of starting; {self.group_name} stopped")
            self._fail(StartupError(f"{self.child_name} {child.index}", f"exit code {code}", why))
            return
        self.log.error(f"{self.child_name} %d died (exit code %s) after {self.ready_word} %.1fs; restarting it in %gs",
                       child.index, code, ran_for, delay,
                       extra={self.log_key: child.index, "exit_code": code, "restart_in": delay})
        child.restart_at = now + delay
        child.delay = self.policy.next_delay(delay)

    def _fail(self, error: StartupError) -> None:
        """Stop every child; the group exits with this (the first) error."""
        if self.failure is None and not self.stopping:
            self.failure = error
            self.exit_code = error.exit_code
        self._stop_all(signal.SIGTERM)

    def _spawn(self, child: Child) -> None:
        reports, report = self.context.Pipe(duplex=False)
        first_start = child.starts == 0
        child.starts += 1
        process = self.context.Process(
            target=self._child_main, args=(child.index, first_start, report), name=f"{self.process_name}-{child.index}"
        )
        process.start()
        report.close()  # the child's end
        child.process, child.reports = process, reports

    def _stop_all(self, signum: int) -> None:
        self.stopping = True
        for child in self.children:
            child.restart_at = None
        self._signal_all(signum)

    def _pass_on(self, signum: int) -> None:
        self.signalled(signum)
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for child in self.children:
            if child.process is not None and child.process.pid and child.process.is_alive():
                os.kill(child.process.pid, signum)

    def _child_main(self, index: int, first_start: bool, report: Connection) -> None:
        # If the supervisor is killed outright, take the children down with it rather than orphan them.
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        for signum in (signal.SIGTERM, signal.SIGINT):  # not the supervisor's handler; the child's own once ready
            signal.signal(signum, signal.SIG_DFL)
        try:
            code = self.run_child(index, first_start, lambda: report.send(READY))
        except StartupError as exc:
            self.log.debug(f"{self.child_name} %d could not start", index, exc_info=True)
            report.send((exc.what, str(exc.value), exc.why, exc.exit_code))
            sys.exit(exc.exit_code)
        sys.exit(code)
