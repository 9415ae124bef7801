"""What edge policy costs: gateway throughput with policies off, all on (memory limiter), all on with
the Redis limiter, and (separately) with the spool encrypted, in one run, as ratios to "off".

    python -m bench.policy_bench [--duration 10] [--rounds 2] [--connections 64] [--profile single]

"all on" = per-IP and per-token rate limits (limits far above the load, so every request is counted
and none refused), a token allowlist, a drop list, CORS origins, a CSP header and the in-flight
bound. The Redis configuration adds `--rate-limit-storage redis://…` against a real `redis-server`
the bench starts on a free loopback port (throwaway, no persistence). Configurations are measured
in interleaved rounds (off, memory, redis, encrypted, off, …) and each figure is the median over
rounds, because absolute numbers drift between runs on a shared machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.net import free_port
from bench.servers import ManagedServer, gateway_command
from bench.wrk import build_pool, pool_context, run_wrk

TOKEN = "phc_bench_token"
HUGE = "1000000000/second"
POLICIES = [
    "--rate-limit-ip", HUGE,
    "--rate-limit-token", HUGE,
    "--allow-tokens", TOKEN,
    "--drop-events", "phc_dropped_token",
    "--cors-origins", "https://app.example.com",
    "--content-security-policy", "default-src 'none'",
    "--max-in-flight", "4096",
]
PROFILE_BATCH = {"single": None, "js-gzip": 10, "node-batch": 50}


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def gateway_argv(workdir: Path, port: int, extra: list[str]) -> list[str]:
    command = gateway_command()
    if command is None:
        raise SystemExit("gateway is not installed here")
    return [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(workdir / "data"),
            "--log-level", "warning", *extra]


def measure(name: str, extra: list[str], args: argparse.Namespace) -> dict[str, float]:
    workdir, port = Path(tempfile.mkdtemp(prefix=f"bench-policy-{name}-")), free_port()
    server = ManagedServer(f"gateway-{name}", gateway_argv(workdir, port, extra), port, workdir)
    pool = build_pool(pool_context(TOKEN, PROFILE_BATCH[args.profile]), args.profile, 200)
    with server:
        cpu = server.cpu_seconds()
        result = run_wrk(server.url + "/", pool, args.duration, args.connections, 1)
        cpu = (server.cpu_seconds() - cpu) / args.duration
    return {"req_per_s": result.req_per_s, "p99_ms": result.latency_ms["p99"],
            "non_2xx": result.non_2xx + sum(result.socket_errors.values()), "server_cpu": cpu,
            "req_per_cpu_s": result.req_per_s / cpu if cpu else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; figures are medians")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", choices=sorted(PROFILE_BATCH), default="single")
    parser.add_argument("--no-encryption", action="store_true", help="skip the encrypted-spool configuration")
    args = parser.parse_args(argv)
    keys = Path(tempfile.mkdtemp(prefix="bench-keys-")) / "spool.keys"
    keys.write_text(f"bench:{base64.b64encode(os.urandom(32)).decode()}\n")
    results: dict[str, list[dict[str, float]]] = {}
    with redis_server() as redis_url:
        configs = {
            "off": ["--rate-limit-ip", "off"],
            "memory": POLICIES,
            "redis": [*POLICIES, "--rate-limit-storage", redis_url],
        }
        if not args.no_encryption:
            configs["encrypted"] = ["--rate-limit-ip", "off", "--spool-encryption-key-file", str(keys)]
        for round_number in range(args.rounds):
            for name, extra in configs.items():
                print(f"round {round_number + 1}/{args.rounds}: {name} ({args.duration:g} s)", file=sys.stderr)
                results.setdefault(name, []).append(measure(name, extra, args))
    shutil.rmtree(keys.parent, ignore_errors=True)
    median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    base = median["off"]
    print(f"profile {args.profile}, wrk 1 thread, {args.connections} connections, {args.duration:g} s x "
          f"{args.rounds} interleaved rounds (medians); shared noisy machine: compare ratios, not absolutes")
    print(f"{'config':<10} {'req/s':>9} {'vs off':>7} {'req/CPU-s':>10} {'vs off':>7} {'p99 ms':>7} {'non-2xx':>8}")
    for name, m in median.items():
        print(f"{name:<10} {m['req_per_s']:>9.0f} {m['req_per_s'] / base['req_per_s']:>7.3f} "
              f"{m['req_per_cpu_s']:>10.0f} {m['req_per_cpu_s'] / base['req_per_cpu_s']:>7.3f} "
              f"{m['p99_ms']:>7.1f} {m['non_2xx']:>8.0f}")
    redis, memory = median["redis"], median["memory"]
    print(f"redis vs memory limiter: req/s {redis['req_per_s'] / memory['req_per_s']:.3f}, "
          f"req/CPU-s {redis['req_per_cpu_s'] / memory['req_per_cpu_s']:.3f} (target ≥ 0.90)")
    print("per round req/s: " + "; ".join(f"{n} " + ", ".join(f"{r['req_per_s']:.0f}" for r in runs)
                                          for n, runs in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
