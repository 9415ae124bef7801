"""Latency tail at a constant load, with the server's own view of where it came from.

```
python -m bench.tail_bench [--rate 1000] [--duration 30] [--rounds 2] [--profile single] [--processes 1] \
    [--build LABEL=SOURCE_DIR ...] [--kafka-bootstrap-servers H:P] [--extra=--fsync=always] [--no-bare] \
    [--json out.json]
```

Each round runs, one after the other, the bare aiohttp app (bench/baseline_app.py) and each gateway
build (`LABEL=DIR`: the `gateway` package found in DIR, e.g. a `git archive` of the commit to compare
with; default: this checkout) at the same open-loop rate (`python -m bench load`'s client), every
server under bench/tail_probe.py. Rounds interleave the targets, so they share the machine's load.

Per run it prints the client's p50/p99/p99.9/max, and from inside the server: its request time
(aiohttp handler) p99, the event-loop stalls (ticks more than STALL_MS late, split into busy on the
loop / waiting for a CPU / off the CPU), GC pauses, spool writes (pwrite + fdatasync in the flush
thread) and appends' waits, Kafka produce waits and batch acks, RSS at 10 % of the run and at its
end, and the load average. `stall>25` is the share of the run the loop spent in stalls longer than
25 ms: about the share of requests such stalls push past 25 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.net import free_port
from bench.runner import run_load
from bench.servers import ManagedServer, _workdir
from bench.worker import LoadConfig

STALL_MS = 5.0
PROBE = Path(__file__).with_name("tail_probe.py")
REPO = Path(__file__).resolve().parent.parent


def _server(label: str, source: Path | None, trace: Path, kafka: str | None, extra: list[str]) -> ManagedServer:
    port = free_port()
    workdir = _workdir(label)
    probe = [sys.executable, str(PROBE), "--out", str(trace), "--"]
    if source is None:  # the bare app
        argv = [*probe, "-m", "bench.baseline_app", "--port", str(port)]
        path = str(REPO)
    else:
        argv = [*probe, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(workdir / "data"), "--workers", "1", "--rate-limit-ip", "off", *extra]
        if kafka:
            argv += ["--kafka-bootstrap-servers", kafka]
        path = str(source)
    env = {**os.environ, "PYTHONPATH": path}
    return ManagedServer(label, argv, port, workdir, env=env)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _entries(trace: dict[str, Any], name: str, since: float, until: float) -> list[list[float]]:
    width = trace["widths"].get(name, 2)
    flat = trace["series"].get(name, [])
    rows = [flat[i:i + width] for i in range(0, len(flat), width)]
    return [row for row in rows if since <= row[0] <= until]


def analyse(trace: dict[str, Any], since: float, until: float) -> dict[str, Any]:
    """Figures of one server trace over [since, until] (time.monotonic())."""
    span = until - since
    ms = 1000.0
    out: dict[str, Any] = {}
    requests = [row[1] for row in _entries(trace, "request", since, until)]
    out["srv_p99_ms"] = _percentile(requests, 99) * ms
    out["srv_max_ms"] = max(requests, default=0.0) * ms
    stalls = [row for row in _entries(trace, "lag", since, until) if row[1] * ms > STALL_MS]
    out["stalls"] = len(stalls)
    out["stall_max_ms"] = max((row[1] for row in stalls), default=0.0) * ms
    out["stall25_share"] = sum(row[1] for row in stalls if row[1] > 0.025) / span
    interval = sum(row[4] for row in stalls) or 1.0
    busy = sum(min(row[2], row[4]) for row in stalls)
    runq = sum(min(row[3], row[4]) for row in stalls)
    out["stall_busy_pct"] = 100 * busy / interval
    out["stall_runq_pct"] = 100 * runq / interval
    out["stall_off_pct"] = max(0.0, 100 - out["stall_busy_pct"] - out["stall_runq_pct"])
    gcs = _entries(trace, "gc", since, until)
    out["gc_per_s"] = len(gcs) / span
    out["gc_max_ms"] = max((row[1] for row in gcs), default=0.0) * ms
    out["gc_ms_per_s"] = sum(row[1] for row in gcs) * ms / span
    out["gc_by_gen"] = {g: sum(1 for row in gcs if row[2] == g) for g in (0, 1, 2)}
    writes = _entries(trace, "spool_write", since, until)
    if writes:
        durations = [row[1] for row in writes]
        out["write_p99_ms"] = _percentile(durations, 99) * ms
        out["write_max_ms"] = max(durations) * ms
        out["writes_per_s"] = len(writes) / span
        appends = [row[1] for row in _entries(trace, "spool_append", since, until)]
        out["append_p99_ms"] = _percentile(appends, 99) * ms
        flushes = _entries(trace, "spool_flush", since, until)
        if flushes:
            out["flush_p99_ms"] = _percentile([row[1] for row in flushes], 99) * ms
            hops = [row[2] for row in flushes]  # the hand-overs to the flush thread and back
            out["hop_p50_ms"], out["hop_p99_ms"] = _percentile(hops, 50) * ms, _percentile(hops, 99) * ms
    produce = [row[1] for row in _entries(trace, "kafka_produce", since, until)]
    if produce:
        out["produce_p99_ms"] = _percentile(produce, 99) * ms
        out["produce_max_ms"] = max(produce) * ms
        batches = _entries(trace, "kafka_batch", since, until)
        out["batch_ack_p99_ms"] = _percentile([row[1] for row in batches], 99) * ms
        out["batch_queued_p99_ms"] = _percentile([row[3] for row in batches], 99) * ms
        requests_ = [row[1] for row in _entries(trace, "kafka_request", since, until)]
        out["request_p50_ms"] = _percentile(requests_, 50) * ms
        out["request_p99_ms"] = _percentile(requests_, 99) * ms
        out["requests_per_s"] = len(requests_) / span
        out["records_per_batch"] = sum(row[2] for row in batches) / (len(batches) or 1)
    rss = [row for row in trace["rss_kib"] if row[0] <= until]
    warm = [kib for when, kib in rss if when >= since + 0.1 * span]
    if warm:
        out["rss_mib"] = (warm[0] / 1024, warm[-1] / 1024)
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    builds: list[tuple[str, Path | None]] = [] if args.no_bare else [("aiohttp", None)]
    for spec in args.build or [f"this={REPO}"]:
        label, _, directory = spec.partition("=")
        builds.append((label, Path(directory).resolve()))
    results = []
    tracedir = Path(tempfile.mkdtemp(prefix="tail-traces-"))
    for round_ in range(1, args.rounds + 1):
        for label, source in builds:
            trace_path = tracedir / f"{label}-{round_}.json"
            server = _server(label, source, trace_path, args.kafka_bootstrap_servers, args.extra or [])
            load_before = os.getloadavg()[0]
            with server:
                config = LoadConfig(target=server.url, profile=args.profile, mode="open", rate=args.rate,
                                    duration_s=args.duration, connections=args.connections,
                                    processes=args.processes)
                cpu_before = server.cpu_seconds()
                summary = run_load(config, progress_stream=None)
                cpu = (server.cpu_seconds() - cpu_before) / summary.elapsed_s
            trace = json.loads(trace_path.read_text())
            # The first second warms up connections: leave it out of the server's figures too.
            figures = analyse(trace, summary.started + 1.0, summary.started + summary.elapsed_s)
            result = {
                "target": label, "round": round_, "load": (load_before, os.getloadavg()[0]),
                "requests": summary.requests, "non_200": summary.requests - summary.statuses.get("200", 0),
                "p50_ms": summary.percentile_ms(50), "p99_ms": summary.percentile_ms(99),
                "p999_ms": summary.percentile_ms(99.9), "max_ms": summary.max_ms,
                "sched_lag_ms": summary.max_lag_s * 1000, "srv_cpu": cpu, **figures,
                "timeline": summary.timeline,
            }
            result["stacks"] = trace.get("stacks", [])
            results.append(result)
            print(_line(result), flush=True)
    return results


def _line(r: dict[str, Any]) -> str:
    parts = [
        f"{r['target']:>8} r{r['round']} load {r['load'][0]:.1f}-{r['load'][1]:.1f}",
        f"p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} p99.9 {r['p999_ms']:.1f} max {r['max_ms']:.0f} ms",
        f"non200 {r['non_200']} schedlag {r['sched_lag_ms']:.0f}",
        f"| srv p99 {r['srv_p99_ms']:.1f} max {r['srv_max_ms']:.0f}",
        f"stalls>{STALL_MS:g}ms {r['stalls']} max {r['stall_max_ms']:.0f} stall>25 {100 * r['stall25_share']:.2f}% "
        f"(busy {r['stall_busy_pct']:.0f}% runq {r['stall_runq_pct']:.0f}% off {r['stall_off_pct']:.0f}%)",
        f"gc {r['gc_per_s']:.1f}/s max {r['gc_max_ms']:.1f} ms {r['gc_ms_per_s']:.1f} ms/s {r['gc_by_gen']}",
    ]
    if "write_p99_ms" in r:
        flush = (f"flush p99 {r['flush_p99_ms']:.1f} hops p50 {r['hop_p50_ms']:.1f} p99 {r['hop_p99_ms']:.1f} "
                 if "flush_p99_ms" in r else "")
        parts.append(f"spool write p99 {r['write_p99_ms']:.1f} max {r['write_max_ms']:.0f} "
                     f"({r['writes_per_s']:.0f}/s) {flush}append p99 {r['append_p99_ms']:.1f}")
    if "produce_p99_ms" in r:
        parts.append(f"kafka produce p99 {r['produce_p99_ms']:.1f} max {r['produce_max_ms']:.0f} "
                     f"batch queued p99 {r['batch_queued_p99_ms']:.1f} ack p99 {r['batch_ack_p99_ms']:.1f} "
                     f"({r['records_per_batch']:.1f} rec/batch) | produce requests {r['requests_per_s']:.0f}/s "
                     f"p50 {r['request_p50_ms']:.1f} p99 {r['request_p99_ms']:.1f}")
    if "rss_mib" in r:
        parts.append(f"rss {r['rss_mib'][0]:.1f}->{r['rss_mib'][1]:.1f} MiB")
    parts.append(f"srv cpu {100 * r['srv_cpu']:.0f}% of a core")
    parts += [f"busy stall x{count}: {stack}" for stack, count in r.get("stacks", [])[:3]]
    return "\n    ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tail_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default="single")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--build", action="append", help="LABEL=DIR: a gateway source tree (repeatable)")
    parser.add_argument("--kafka-bootstrap-servers")
    parser.add_argument("--extra", action="append", help="one more `gateway serve` argument (repeatable)")
    parser.add_argument("--json", type=Path, help="every run's figures and client timeline")
    parser.add_argument("--no-bare", action="store_true", help="leave the bare aiohttp app out (e.g. an RSS run)")
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
