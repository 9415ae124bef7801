"""Append latency of the spool alone at a constant rate, on a loop as busy as a gateway's.

```
python -m bench.spool_latency [--rate 1000] [--seconds 15] [--rounds 3] [--work-us 300] \
    [--policy batch,never] [--build LABEL=SOURCE_DIR ...] [--passes]
```

Each append is one "request": the loop first burns `--work-us` of CPU for it (what parsing and
answering a single event costs the gateway's loop), then appends one 1 KB record and waits for its
acknowledgement. Appends start on an open-loop schedule; latency runs from the scheduled time. Each
build (`LABEL=DIR`: the `gateway` package in DIR; default: this checkout) runs in its own process,
rounds interleave the builds and policies. `never` leaves fdatasync out, so what remains is the
spool's hand-overs between the loop and its flush thread.

`--passes`: one append at a time while a callback burns `--work-us` in every loop pass; prints how
many loop passes an append took from call to acknowledgement (independent of the machine's load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


async def _measure(policy: str, rate: float, seconds: float, work_s: float) -> dict[str, float]:
    from gateway.core.record import Record
    from gateway.spool import FsyncPolicy, Spool

    record = Record("events", b"phc_token:user-1", (("token", b"phc_token"),), b"x" * 1024)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(Path(directory), fsync=FsyncPolicy(policy))
        await spool.open()

        async def one(scheduled: float) -> None:
            end = time.perf_counter() + work_s
            while time.perf_counter() < end:  # the request's own CPU on the loop
                pass
            await spool.append([record])
            latencies.append(time.perf_counter() - scheduled)

        tasks = set()
        start = time.perf_counter()
        count = int(rate * seconds)
        for index in range(count):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        flushes = spool.stats().flushes
        await spool.close()
    latencies.sort()

    def at(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))] * 1000

    return {"p50_ms": at(50), "p99_ms": at(99), "p999_ms": at(99.9), "max_ms": latencies[-1] * 1000,
            "flushes_per_s": flushes / seconds}


async def _passes(policy: str, seconds: float, work_s: float) -> dict[str, float]:
    """One append at a time while a callback re-schedules itself every loop pass and burns `work_s`
    (a loop busy with other requests): how many passes, and how long, from append to acknowledgement."""
    from gateway.core.record import Record
    from gateway.spool import FsyncPolicy, Spool

    record = Record("events", b"phc_token:user-1", (("token", b"phc_token"),), b"x" * 1024)
    loop = asyncio.get_running_loop()
    passes = [0]

    def busy() -> None:
        passes[0] += 1
        end = time.perf_counter() + work_s
        while time.perf_counter() < end:
            pass
        loop.call_soon(busy)

    counts, latencies = [], []
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(Path(directory), fsync=FsyncPolicy(policy))
        await spool.open()
        loop.call_soon(busy)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            before, started = passes[0], time.perf_counter()
            await spool.append([record])
            counts.append(passes[0] - before)
            latencies.append(time.perf_counter() - started)
        await spool.close()
    counts.sort()
    latencies.sort()
    return {"passes_p50": counts[len(counts) // 2], "passes_p99": counts[int(0.99 * len(counts))],
            "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(0.99 * len(latencies))] * 1000,
            "appends": len(counts)}


def _worker(args: argparse.Namespace) -> None:
    import uvloop

    cpu = time.process_time()
    if args.passes:
        print(json.dumps(uvloop.run(_passes(args.policy, args.seconds, args.work_us / 1e6))))
        return
    result = uvloop.run(_measure(args.policy, args.rate, args.seconds, args.work_us / 1e6))
    result["cpu_pct"] = 100 * (time.process_time() - cpu) / args.seconds
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spool_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-us", type=float, default=300.0)
    parser.add_argument("--policy", default="batch,never")
    parser.add_argument("--build", action="append", help="LABEL=DIR: a gateway source tree (repeatable)")
    parser.add_argument("--passes", action="store_true",
                        help="one append at a time on a loop whose every pass burns --work-us: loop passes per append")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    builds = [spec.partition("=")[::2] for spec in args.build or [f"this={REPO}"]]
    for round_ in range(1, args.rounds + 1):
        for policy in args.policy.split(","):
            for label, directory in builds:
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--policy", policy,
                           "--rate", str(args.rate), "--seconds", str(args.seconds), "--work-us", str(args.work_us),
                           *(["--passes"] if args.passes else [])]
                load = os.getloadavg()[0]
                env = {**os.environ, "PYTHONPATH": str(Path(directory).resolve())}
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd="/")
                r = json.loads(out.stdout)
                if args.passes:
                    print(f"r{round_} {policy:>6} {label:>8} load {load:4.1f}: loop passes per append p50 "
                          f"{r['passes_p50']} p99 {r['passes_p99']}; p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                          f"({r['appends']} appends)", flush=True)
                    continue
                print(f"r{round_} {policy:>6} {label:>8} load {load:4.1f}: p50 {r['p50_ms']:6.2f} "
                      f"p99 {r['p99_ms']:7.2f} p99.9 {r['p999_ms']:7.2f} max {r['max_ms']:7.1f} ms, "
                      f"{r['flushes_per_s']:5.0f} flushes/s, "
                      f"cpu {r['cpu_pct']:.0f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
