"""Runs a load over several generator processes, shows progress on stderr and merges the results.

Processes are spawned (not forked) so each builds its own event loop; they start together once all
are ready, report counters every second, and send back their measurements when done.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import sys
import time
from dataclasses import asdict
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any, TextIO

from bench.recorder import RunSummary, merge
from bench.worker import LoadConfig, run_process

READY_TIMEOUT_S = 60.0


def _process_main(config: LoadConfig, index: int, messages: Queue, go: Event) -> None:
    """Entry point of one generator process."""
    try:
        messages.put(("ready", index, None))
        if not go.wait(READY_TIMEOUT_S):
            return
        export = run_process(config, lambda counters: messages.put(("progress", index, counters)))
        messages.put(("result", index, export))
    except BaseException as exc:
        messages.put(("error", index, f"{type(exc).__name__}: {exc}"))
        raise


def _next_message(messages: Queue, processes: list[Any], deadline: float) -> tuple[str, int, Any]:
    """The next message from the generators; raise if they died silently or the deadline passed."""
    while True:
        try:
            return messages.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() > deadline or not all(p.is_alive() for p in processes):
                raise RuntimeError("generator processes stopped without reporting") from None


class Progress:
    """One status line on stderr per second (redrawn in place on a terminal, every 5 s otherwise)."""

    def __init__(self, config: LoadConfig, stream: TextIO | None) -> None:
        self.config = config
        self.stream = stream
        self.counters: dict[int, dict[str, int]] = {}
        self.started = time.monotonic()
        self.last_total = 0
        self.last_time = self.started
        self.last_line = 0.0

    def update(self, index: int, counters: dict[str, int]) -> None:
        self.counters[index] = counters
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self.last_time < 0.9:
            return
        total = sum(c["requests"] for c in self.counters.values())
        ok = sum(c["ok"] for c in self.counters.values())
        rate = (total - self.last_total) / (now - self.last_time)
        self.last_total, self.last_time = total, now
        line = (
            f"[{now - self.started:5.0f}/{self.config.duration_s:.0f} s] {total:>10,} req "
            f"{rate:>9,.0f} req/s  ok {ok / total if total else 0:6.1%}"
        )
        if self.stream.isatty():
            self.stream.write("\r" + line)
        elif now - self.last_line >= 5.0:
            self.stream.write(line + "\n")
            self.last_line = now
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.stream.isatty():
            self.stream.write("\n")


def _join_acked_logs(config: LoadConfig) -> None:
    """Concatenate the per-process acked-log parts into the requested file."""
    assert config.acked_log
    with open(config.acked_log, "wb") as out:
        for index in range(config.processes):
            part = config.for_process(index).acked_log
            assert part
            if os.path.exists(part):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
                os.unlink(part)


def run_load(config: LoadConfig, progress_stream: TextIO | None = sys.stderr) -> RunSummary:
    """Run `config` across `config.processes` spawned processes and return the merged summary."""
    ctx = mp.get_context("spawn")
    messages: Queue = ctx.Queue()
    go = ctx.Event()
    processes = [
        ctx.Process(target=_process_main, args=(config.for_process(i), i, messages, go), daemon=True)
        for i in range(config.processes)
    ]
    for process in processes:
        process.start()
    exports: dict[int, dict[str, Any]] = {}
    progress = Progress(config, progress_stream)
    try:
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready < len(processes):
            kind, index, payload = _next_message(messages, processes, deadline)
            if kind == "error":
                raise RuntimeError(f"generator process {index} failed: {payload}")
            ready += kind == "ready"
        go.set()
        progress.started = progress.last_time = time.monotonic()
        hard_deadline = progress.started + config.duration_s + config.timeout_s + READY_TIMEOUT_S
        while len(exports) < len(processes):
            kind, index, payload = _next_message(messages, processes, hard_deadline)
            if kind == "progress":
                progress.update(index, payload)
            elif kind == "result":
                exports[index] = payload
            elif kind == "error":
                raise RuntimeError(f"generator process {index} failed: {payload}")
    finally:
        progress.close()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    if config.acked_log:
        _join_acked_logs(config)
    return merge(asdict(config), [exports[i] for i in sorted(exports)])
