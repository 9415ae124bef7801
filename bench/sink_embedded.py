"""Embedded sink throughput: a spool of capture requests → `gateway sink --data-dir` → chdb, rows per
CPU-second of the whole sink process (chdb runs inside it).

    python -m bench.sink_embedded [--rows N] [--events-per-request N] [--rounds N]
                                  [--gateway-command LABEL=CMD ...]

A data dir is filled once, as an embedded gateway leaves it: one spool frame per request of
posthog-js-like `$pageview`s (~900 B each as a Kafka record). Each round copies it and runs every
command on its copy in turn (so builds are interleaved), until `gateway_sink_rows_inserted_total`
(`--metrics-port`) reaches the row count. CPU is the process's (all threads) from /proc: "ready" is
the first answered scrape (chdb opened, table created), so "rows per CPU-s after ready" leaves out
start-up; the peak RSS is the process's VmHWM when the rows are in. Compare builds by passing several
`--gateway-command`, e.g. another worktree's `.venv/bin/gateway`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.net import free_port
from bench.sink_bench import pageview_properties
from gateway.capture.events import RecordOptions, RequestContext, check_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_content
from gateway.spool import Spool

ROWS_METRIC = b"gateway_sink_rows_inserted_total "
TIMEOUT_S = 600.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    label: str
    wall_s: float
    cpu_s: float
    cpu_after_ready_s: float
    rows: int
    peak_rss_mib: float

    def line(self) -> str:
        return (f"{self.label:>12}: {self.rows / self.cpu_s:>9,.0f} rows per CPU-s "
                f"({self.rows / self.cpu_after_ready_s:,.0f} after ready), {self.cpu_s:.2f} CPU-s, "
                f"{self.rows / self.wall_s:,.0f} rows/s wall, peak RSS {self.peak_rss_mib:,.0f} MiB")  # fmt: skip


def event(index: int, now: datetime) -> dict[str, object]:
    """A posthog-js `$pageview` as capture validated it (the properties of bench.sink_bench's message)."""
    return {
        "uuid": f"0190c6b2-7d1e-7a4c-{index >> 48 & 0xFFFF:04x}-{index & 0xFFFFFFFFFFFF:012x}",
        "event": "$pageview",
        "properties": {"distinct_id": f"user-{index % 5000}", **pageview_properties(index)},
        "timestamp": (now - timedelta(milliseconds=index % 1000)).isoformat().replace("+00:00", "Z"),
    }


async def fill(data_dir: Path, rows: int, per_request: int) -> None:
    """`rows` events in requests of `per_request`, in the spool of worker 0."""
    spool = Spool(data_dir / "spool" / "worker-0")
    await spool.open()
    now = datetime.now(UTC)
    context = RequestContext("203.0.113.7", now)
    for first in range(0, rows, per_request):
        parsed = ParsedRequest([event(i, now) for i in range(first, min(first + per_request, rows))],
                               "phc_bench", now - timedelta(milliseconds=20), False)  # fmt: skip
        check_events(parsed)
        await spool.append_request(request_content(parsed, context, RecordOptions()), len(parsed.events))
    await spool.close()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: all threads


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rows_stored(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read()
    except OSError:
        return None
    start = text.find(b"\n" + ROWS_METRIC)
    return int(float(text[start + len(ROWS_METRIC) + 1 : text.index(b"\n", start + 1)])) if start >= 0 else 0


def measure(label: str, command: list[str], template: Path, rows: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="sink-embedded-") as scratch:
        data_dir = Path(scratch) / "data"
        shutil.copytree(template, data_dir)
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen([*command, "sink", "--data-dir", str(data_dir), "--metrics-port", str(port),
                                    "--clickhouse", f"chdb://{scratch}/chdb",
                                    "--log-level", "warning"], stdin=subprocess.DEVNULL, cwd=scratch)  # fmt: skip
        try:
            ready_cpu = None
            while True:
                stored = rows_stored(port)
                if stored is not None and ready_cpu is None:
                    ready_cpu = cpu_s(process.pid)
                if stored is not None and stored >= rows:
                    total_cpu, wall = cpu_s(process.pid), time.perf_counter() - started
                    peak = peak_rss_mib(process.pid)
                    break
                if process.poll() is not None or time.perf_counter() - started > TIMEOUT_S:
                    raise RuntimeError(f"{label}: gateway sink stopped or stalled (exit {process.returncode})")
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(60)
    return Run(label, wall, total_cpu, total_cpu - (ready_cpu or 0.0), rows, peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--events-per-request", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gateway-command", action="append", default=[], metavar="LABEL=CMD",
                        help="a build to measure (repeatable); default: this one (`python -m gateway`)")  # fmt: skip
    args = parser.parse_args()
    builds = [(label, cmd.split()) for label, _, cmd in (spec.partition("=") for spec in args.gateway_command)]
    builds = builds or [("this", [sys.executable, "-m", "gateway"])]
    with tempfile.TemporaryDirectory(prefix="sink-embedded-template-") as template:
        asyncio.run(fill(Path(template), args.rows, args.events_per_request))
        print(f"{args.rows} events in requests of {args.events_per_request}; load average "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
        runs: dict[str, list[Run]] = {label: [] for label, _ in builds}
        for round_number in range(args.rounds):
            for label, command in builds:
                run = measure(label, command, Path(template), args.rows)
                runs[label].append(run)
                print(f"round {round_number + 1} {run.line()}", flush=True)
    print(f"medians (load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}):")
    for label, measured in runs.items():
        print(f"{label:>12}: {statistics.median(args.rows / r.cpu_s for r in measured):,.0f} rows per CPU-s, "
              f"{statistics.median(args.rows / r.cpu_after_ready_s for r in measured):,.0f} after ready, "
              f"{statistics.median(args.rows / r.wall_s for r in measured):,.0f} rows/s wall, "
              f"peak RSS {max(r.peak_rss_mib for r in measured):,.0f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
