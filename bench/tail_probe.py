"""Where a server's latency tail comes from, seen from inside its process.

Run a server under it: `python -m bench.tail_probe --out trace.json -- -m gateway serve ...` (or
`-- -m bench.baseline_app --port P`). It runs the module in this process (one worker: no fork) and,
once the event loop runs, records until the server exits:

- loop lag: a callback due every TICK_S, and how late it ran. Each late tick is split by what the
  loop's thread did meanwhile (its CPU time and its run-queue wait from /proc/thread-self/schedstat):
  `busy` (Python ran on the loop: a long slice), `runq` (runnable but not scheduled: the machine is
  loaded) and `off` (neither: blocked in a system call or waiting for the GIL);
- GC pauses (gc.callbacks), per generation;
- the gateway's spool writes in its flush thread (pwrite, fdatasync), and each append's wait for them;
- the gateway's Kafka waits: each request's produce(), each batch's time from opened to handed to
  aiokafka and from send_batch to its ack;
- every request's time in aiohttp's handler (request parsed → response written);
- the loop thread's stack in stalls over STACK_STALL_S while it was running Python (a long slice).

Each is a list of (time.monotonic() at its end, duration in s [, extra]), written as JSON at exit
with the process's RSS. `bench.tail_bench` reads it and lines it up with the client's timeline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import runpy
import sys
import threading
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

TICK_S = 0.002
STACK_STALL_S = 0.02
STACK_DEPTH = 6


class Trace:
    """Everything recorded, as flat arrays (small and invisible to the GC)."""

    def __init__(self) -> None:
        self.series: dict[str, array] = {}
        self.rss_kib: list[tuple[float, int]] = []
        self.stacks: Counter[str] = Counter()

    def add(self, name: str, *values: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = array("d")
        series.extend(values)

    def dump(self, path: Path) -> None:
        widths = {name: _WIDTHS.get(name, 2) for name in self.series}
        data = {
            "widths": widths,
            "series": {name: values.tolist() for name, values in self.series.items()},
            "rss_kib": self.rss_kib,
            "stacks": self.stacks.most_common(30),
        }
        path.write_text(json.dumps(data))


# Values per entry: (end, duration) unless listed.
_WIDTHS = {"lag": 5, "gc": 3, "spool_write": 4, "spool_flush": 3, "kafka_batch": 4}
TRACE = Trace()


def _rss_kib() -> int:
    """The process's RSS less what this probe's own arrays hold."""
    own = sum(values.buffer_info()[1] * values.itemsize for values in TRACE.series.values()) // 1024
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) - own
    return 0


def _install_gc() -> None:
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            started[0] = now
        else:
            TRACE.add("gc", now, now - started[0], info["generation"])

    gc.callbacks.append(callback)


class StallSampler(threading.Thread):
    """Takes the loop thread's stack once in every stall longer than STACK_STALL_S during which that
    thread ran (its CPU time grew by half the stall): what code held the loop."""

    def __init__(self, monitor: LagMonitor) -> None:
        super().__init__(name="tail-probe-stalls", daemon=True)
        self.monitor = monitor
        self.loop_thread = threading.get_ident()
        self.stacks: Counter[str] = Counter()

    def run(self) -> None:
        sampled_for = 0.0
        while True:
            time.sleep(STACK_STALL_S / 4)
            monitor = self.monitor
            last, cpu_then = monitor.last_tick, monitor.cpu
            stalled = time.monotonic() - last
            if stalled < STACK_STALL_S or sampled_for == last:
                continue
            cpu_now, _ = monitor._sample()
            if cpu_now - cpu_then < stalled / 2:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            sampled_for = last
            stack = traceback.extract_stack(frame)[-STACK_DEPTH:]
            self.stacks[" < ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(stack))] += 1


class LagMonitor:
    """A callback due every TICK_S; a late one is recorded with what the loop's thread did meanwhile."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        self.due = time.monotonic() + TICK_S
        self.last_tick = time.monotonic()
        self.cpu, self.runq = self._sample()
        self.last_rss = 0.0
        loop.call_later(TICK_S, self.tick)

    def _sample(self) -> tuple[float, float]:
        fields = os.pread(self.schedstat, 128, 0).split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9

    def tick(self) -> None:
        now = time.monotonic()
        cpu, runq = self._sample()
        lag = now - self.due
        if lag > 0.001:
            TRACE.add("lag", now, lag, cpu - self.cpu, runq - self.runq, now - (self.due - TICK_S))
        self.cpu, self.runq, self.last_tick = cpu, runq, now
        if now - self.last_rss >= 1.0:
            self.last_rss = now
            TRACE.rss_kib.append((now, _rss_kib()))
        self.due = now + TICK_S
        self.loop.call_later(TICK_S, self.tick)


def _timed_async(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return await method(*args, **kwargs)
        finally:
            now = time.monotonic()
            TRACE.add(name, now, now - started)

    return wrapper


def _install_server_probes() -> None:
    """Wrap what the process has imported: aiohttp's request handling, the spool, the Kafka producer."""
    from aiohttp import web_protocol

    handler = web_protocol.RequestHandler
    handler._handle_request = _timed_async("request", handler._handle_request)
    writer = sys.modules.get("gateway.spool.writer")
    if writer is not None:
        spool = writer.Spool
        spool._append = _timed_async("spool_append", spool._append)
        write, flush_group = spool._write, getattr(spool, "_flush_group", None)

        def timed_write(self: Any, frames: list[bytes]) -> None:
            started = time.monotonic()
            write(self, frames)
            now = time.monotonic()
            self.probe_write_s = now - started
            TRACE.add("spool_write", now, now - started, sum(map(len, frames)), len(frames))

        async def timed_flush_group(self: Any, loop: Any) -> None:
            """The loop's view of one group's write: entry (end, duration, hops), hops being the hand-over
            to the flush thread and back (duration less the write itself)."""
            self.probe_write_s = 0.0
            started = time.monotonic()
            await flush_group(self, loop)
            now = time.monotonic()
            TRACE.add("spool_flush", now, now - started, now - started - self.probe_write_s)

        spool._write = timed_write
        if flush_group is not None:  # a build whose flusher task awaits each write
            spool._flush_group = timed_flush_group
    producer_module = sys.modules.get("gateway.sinks.kafka_producer")
    if producer_module is not None:
        producer = producer_module.ReconnectingProducer
        producer.produce = _timed_async("kafka_produce", producer.produce)
        from aiokafka import AIOKafkaProducer

        create_batch, send_batch = AIOKafkaProducer.create_batch, AIOKafkaProducer.send_batch

        def stamped_create_batch(self: Any) -> Any:
            builder = create_batch(self)
            builder.probe_created = time.monotonic()
            return builder

        async def timed_send_batch(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            records = batch.record_count() if hasattr(batch, "record_count") else 0
            queued = started - getattr(batch, "probe_created", started)  # opened → handed to aiokafka
            future = await send_batch(self, batch, *args, **kwargs)

            def acked(_: Any) -> None:
                now = time.monotonic()
                TRACE.add("kafka_batch", now, now - started, records, queued)

            future.add_done_callback(acked)
            return future

        from aiokafka.producer.sender import Sender

        Sender._send_produce_req = _timed_async("kafka_request", Sender._send_produce_req)
        AIOKafkaProducer.create_batch = stamped_create_batch
        AIOKafkaProducer.send_batch = timed_send_batch


def _install_loop_hook() -> None:
    """Start the lag monitor and the server probes on the first loop that starts running.

    uvloop keeps its own reference to asyncio's `_set_running_loop`, taken when it is imported: this
    must run before anything imports uvloop."""
    if "uvloop" in sys.modules:
        raise RuntimeError("bench.tail_probe must be installed before uvloop is imported")
    import asyncio.events as events

    original = events._set_running_loop
    started: list[LagMonitor] = []

    def set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
        original(loop)
        if loop is not None and not started:
            _install_server_probes()
            monitor = LagMonitor(loop)
            started.append(monitor)
            sampler = StallSampler(monitor)
            TRACE.stacks = sampler.stacks
            sampler.start()

    events._set_running_loop = set_running_loop
    asyncio._set_running_loop = set_running_loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tail_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="trace file (JSON), written at exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-m MODULE ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if len(command) < 2 or command[0] != "-m":
        parser.error("give the server as: -- -m MODULE [ARGS...]")
    _install_gc()
    _install_loop_hook()
    sys.argv = [command[1], *command[2:]]
    try:
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        TRACE.rss_kib.append((time.monotonic(), _rss_kib()))
        TRACE.dump(args.out)


if __name__ == "__main__":
    main()
