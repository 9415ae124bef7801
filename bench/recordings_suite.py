"""`python -m bench suite recordings`: what one recordings-sink core stores next to what one gateway core accepts.

Per payload size (posthog-js replay flushes: gzip `/s/` bodies of `$snapshot` events carrying rrweb mutations,
`--replay-kb` of rrweb JSON each), in one invocation:

1. `gateway serve` (embedded: the spool, 1 worker) takes wrk load on `/s/` for `--duration` seconds, from a pool
   of 200 bodies built by the `replay` profile; its CPU is read from /proc: snapshot items per CPU-second accepted.
2. The gateway stops; `gateway recordings sink` (blocks in a directory, metadata in chdb) drains that spool.
   Its CPU (ClickHouse included: chdb runs in the process) until the last item is stored, read from /proc, gives
   snapshot items and MB (rrweb JSON) per CPU-second stored.

The ratio sink / gateway per CPU-second above 1 means one sink core keeps up with one gateway core.
"""

from __future__ import annotations

import gzip
import re
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import requests

from bench.net import free_port
from bench.servers import ManagedServer, gateway, gateway_command
from bench.wrk import build_pool, pool_context, run_wrk

SETTLE_S = 2.0  # done when the stored-items counter stays put this long with nothing buffered (blocks flush by
# the sink's defaults: 8 MB or 10 s)
STORED = re.compile(rb"^recordings_snapshot_items_stored_total (\S+)$", re.M)
BUFFERED = re.compile(rb"^recordings_buffered_bytes (\S+)$", re.M)


@dataclass
class RecordingsFigure:
    replay_kb: int
    gzip_kb: float  # mean request body on the wire
    items_per_request: float
    gateway_req_per_s: float = 0.0
    gateway_cpu_s: float = 0.0
    gateway_items_per_cpu_s: float = 0.0
    sink_items: int = 0
    sink_wall_s: float = 0.0
    sink_cpu_s: float = 0.0  # from ready (chdb opened, table created) to the last item stored
    sink_items_per_cpu_s: float = 0.0
    sink_mb_per_cpu_s: float = 0.0
    ratio: float = 0.0  # sink items per CPU-second / gateway items per CPU-second
    error: str | None = None


def run_recordings_suite(replay_kbs: list[int], duration_s: float, connections: int, token: str,
                         command: list[str] | None = None) -> list[RecordingsFigure]:
    return [_measure(kb, duration_s, connections, token, command) for kb in replay_kbs]


def _measure(replay_kb: int, duration_s: float, connections: int, token: str,
             command: list[str] | None) -> RecordingsFigure:
    context = pool_context(token, None)
    context.replay_bytes = replay_kb * 1024
    pool = build_pool(context, "replay", 200)
    snapshot_items = [e["properties"]["$snapshot_data"] for r in pool for e in _events(r.body)]
    items_per_request = sum(len(items) for items in snapshot_items) / len(pool)
    bytes_per_item = sum(len(orjson.dumps(i)) for items in snapshot_items for i in items) / (
        items_per_request * len(pool))
    figure = RecordingsFigure(replay_kb, sum(len(r.body) for r in pool) / len(pool) / 1024, items_per_request)
    with gateway(command=command, name=f"recordings-gateway-{replay_kb}kb") as server:
        before = server.cpu_seconds()
        result = run_wrk(server.url, pool, duration_s, connections)
        figure.gateway_cpu_s = server.cpu_seconds() - before
        server.stop()
        figure.gateway_req_per_s = result.req_per_s
        if result.non_2xx or not result.requests:
            figure.error = f"gateway: {result.non_2xx} non-2xx of {result.requests}"
            return figure
        figure.gateway_items_per_cpu_s = result.requests * items_per_request / figure.gateway_cpu_s
        expected = round(result.requests * items_per_request)
        figure.sink_items, figure.sink_wall_s, figure.sink_cpu_s = _drain(server.workdir, command, expected)
    figure.sink_items_per_cpu_s = figure.sink_items / figure.sink_cpu_s
    figure.sink_mb_per_cpu_s = figure.sink_items_per_cpu_s * bytes_per_item / 1e6
    figure.ratio = figure.sink_items_per_cpu_s / figure.gateway_items_per_cpu_s
    if figure.sink_items < expected:
        figure.error = f"sink stored {figure.sink_items} of ~{expected} items"
    return figure


def _events(body: bytes) -> list[dict]:
    return orjson.loads(gzip.decompress(body))


def _drain(workdir: Path, command: list[str] | None, expected: int) -> tuple[int, float, float]:
    """Run the recordings sink on the gateway's data dir until it has stored everything: (items, wall s, CPU s)."""
    data = workdir / "data"
    port = free_port()
    argv = [*(command or gateway_command() or []), "recordings", "sink", "--data-dir", str(data),
            "--clickhouse", f"chdb://{data}/chdb", "--recordings-http-port", str(port),
            "--recordings-retention-interval", "0", "--log-format", "text"]
    sink = ManagedServer("recordings-sink", argv, port, workdir)
    sink.__enter__()  # not `with`: the gateway's workdir is removed with the gateway
    try:
        started, ready_cpu = time.monotonic(), sink.cpu_seconds()
        stored, last_change, cpu_at_change = 0.0, started, ready_cpu
        stalled = lambda: time.monotonic() - last_change  # noqa: E731
        while (stalled() < SETTLE_S or (stored < expected and stalled() < 30)) and time.monotonic() - started < 900:
            time.sleep(0.2)
            try:
                metrics = requests.get(f"{sink.url}/metrics", timeout=5).content
            except requests.Timeout:  # (a sink before 2026-12-07 kept its event loop busy for seconds in a backlog)
                continue
            now_stored = float(STORED.search(metrics)[1])  # type: ignore[index]
            buffered = float(BUFFERED.search(metrics)[1])  # type: ignore[index]
            if now_stored != stored or buffered:
                stored, last_change, cpu_at_change = now_stored, time.monotonic(), sink.cpu_seconds()
        return int(stored), last_change - started, cpu_at_change - ready_cpu
    finally:
        sink.stop()


def recordings_table(figures: list[RecordingsFigure], duration_s: float) -> str:
    lines = [
        f"suite recordings: gateway (1 worker, spool) under wrk for {duration_s:g} s per size, then "
        "`gateway recordings sink` (directory + chdb) draining that spool",
        "| rrweb KB/request | gzip KB | items/request | gateway req/s | gateway items/CPU-s | sink items "
        "| sink items/CPU-s | sink MB/CPU-s | sink/gateway per CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.replay_kb} | {f.gzip_kb:,.1f} | {f.items_per_request:,.0f} | {f.gateway_req_per_s:,.0f} "
            f"| {f.gateway_items_per_cpu_s:,.0f} | {f.sink_items:,} | {f.sink_items_per_cpu_s:,.0f} "
            f"| {f.sink_mb_per_cpu_s:,.1f} | {f.ratio:.2f} |" + (f" {f.error}" if f.error else ""))
    return "\n".join(lines)
