"""Client CPU per upstream POST: the sink's lean client against a baseline version of it from git and
aiohttp's client, interleaved in one invocation, against bench/upstream_app.py in a child process.

Usage: python -m bench.post_client --baseline-ref REF [--requests 20000] [--rounds 3] [--body-bytes 5000]
    [--concurrency 16]
Prints µs of this process's CPU per request (time.process_time; the upstream's CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import aiohttp
import uvloop
from yarl import URL

from bench.net import free_port, wait_http
from gateway.upstream import posts

Post = Callable[[], Awaitable[object]]


def load_baseline(ref: str) -> ModuleType:
    """gateway/upstream/posts.py as of git `ref`, imported under another name."""
    source = subprocess.run(["git", "show", f"{ref}:gateway/upstream/posts.py"], check=True,
                            capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "posts_baseline.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("posts_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def cpu_per_request(post: Post, requests: int, concurrency: int) -> float:
    """µs of CPU per request, `concurrency` posts in flight."""
    await asyncio.gather(*(post() for _ in range(concurrency)))  # open the connections before timing
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await post()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / requests * 1e6


async def run(args: argparse.Namespace, base: URL) -> dict[str, list[float]]:
    body = b"x" * args.body_bytes
    headers = (("Content-Type", "text/plain"), ("X-Forwarded-For", "198.51.100.9"))
    clients = {"baseline": load_baseline(args.baseline_ref).PostClient, "httptools": posts.PostClient}
    results: dict[str, list[float]] = {name: [] for name in [*clients, "aiohttp"]}
    for _ in range(args.rounds):  # interleaved: the machine's other load hits every client alike
        for name, factory in clients.items():
            client = factory(base, connections=args.concurrency, retries=0)

            async def lean(client: posts.PostClient = client) -> object:
                status, _ = await client.post("/e/", headers, body, route="bench", timeout=10)
                assert status == 200
                return status

            results[name].append(await cpu_per_request(lean, args.requests, args.concurrency))
            await client.close()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency), skip_auto_headers=("User-Agent",)
        ) as session:

            async def pooled() -> object:
                async with session.post(base / "e/", data=body, headers=dict(headers)) as response:
                    await response.read()
                    assert response.status == 200
                    return response.status

            results["aiohttp"].append(await cpu_per_request(pooled, args.requests, args.concurrency))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", required=True, help="git revision of the baseline posts.py")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--body-bytes", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.upstream_app", "--port", str(port)])
    try:
        base = URL(f"http://127.0.0.1:{port}")
        wait_http(f"{base}/e/", 20, lambda: upstream.poll() is None)
        results = uvloop.run(run(args, base))
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"client CPU per POST of {args.body_bytes} B, {args.concurrency} in flight, {args.requests} "
          f"requests x {args.rounds} rounds (baseline: {args.baseline_ref}); load average {load_average()}")
    for name, values in results.items():
        print(f"  {name:10} median {statistics.median(values):6.1f} µs  range {min(values):6.1f}-{max(values):6.1f}")
    ratios = [new / old for new, old in zip(results["httptools"], results["baseline"], strict=True)]
    print(f"  httptools / baseline per round: {', '.join(f'{r:.2f}' for r in ratios)}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
