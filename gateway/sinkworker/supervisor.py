"""`gateway sink --processes N`: N sink processes in one Kafka consumer group, supervised by the parent.

The rules are `gateway serve`'s for its workers (gateway/child_processes.py): SIGTERM/SIGINT are
forwarded (each child stores and commits what it consumed, then exits), SIGUSR2 is passed on (each
child logs its stacks, gateway/core/stack_dump.py); a start-up failure stops the others with that
error; a child that dies after it ran is restarted with back-off, and a crash loop stops the sink
with one line. Exit status: the first failure's, else 1 if a child did not stop cleanly
(batches left unstored at its shutdown timeout), else 0.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import replace

from gateway.child_processes import STOPPED_BY_SIGNAL, Child, ChildSupervisor, RestartPolicy
from gateway.settings import SinkSettings

log = logging.getLogger("gateway.sink")

ChildMain = Callable[[SinkSettings, Callable[[], None]], int]


class SinkSupervisor(ChildSupervisor):
    """Parent of `settings.processes` sink processes; `child_main(settings, on_running)` runs one."""

    log = log
    child_name = "sink process"
    process_name = "sink"
    group_name = "sink"
    ready_word = "running"
    log_key = "sink_process"
    passed_on = (signal.SIGUSR2,)

    def __init__(self, settings: SinkSettings, child_main: ChildMain, policy: RestartPolicy | None = None) -> None:
        super().__init__(settings.processes, policy)
        self.settings = settings
        self.child_main = child_main

    def run_child(self, index: int, first_start: bool, on_ready: Callable[[], None]) -> int:
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # not the parent's handler; the sink's own once it runs
        settings = replace(self.settings, processes=1)
        if settings.metrics_port:
            settings = replace(settings, metrics_port=settings.metrics_port + index)
        return self.child_main(settings, on_ready)

    def started(self) -> None:
        log.info("sink running %d processes in consumer group %s", len(self.children), self.settings.group_id)

    def ready(self, child: Child) -> None:
        pid = child.process and child.process.pid
        log.info("sink process %d running (pid %s)", child.index, pid, extra={"sink_process": child.index, "pid": pid})

    def stopped(self, child: Child, code: int) -> None:
        if code not in (0, *STOPPED_BY_SIGNAL):
            log.error("sink process %d stopped with exit code %s", child.index, code)
            self.exit_code = self.exit_code or 1
