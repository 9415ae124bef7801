"""Max-throughput measurements with wrk, replaying a pool of bodies built by bench.payloads.

wrk (C, one event loop per thread) needs a fraction of the CPU the Python client needs per request,
so on 2 shared cores it is the tool that can saturate a server. Its bodies are generated up front,
so uuids repeat every `pool` requests (use the Python harness for loss/uniqueness checks), and its
latency is closed-loop service time (not corrected for coordinated omission).
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.net import require_loopback
from bench.payloads import PROFILES, BenchRequest, PayloadContext

SCRIPT = Path(__file__).with_name("wrk") / "replay_bodies.lua"
RESULT_PREFIX = "WRK_JSON "


class WrkUnavailable(RuntimeError):
    """wrk is not installed (apt-get install wrk)."""


@dataclass(frozen=True)
class WrkResult:
    """What wrk measured; latencies in milliseconds."""

    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: dict[str, int]
    latency_ms: dict[str, float]
    events_per_request: float
    cpu_busy: float

    @property
    def req_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def events_per_s(self) -> float:
        """Events in requests answered 2xx, per second (the pool's mean events per request)."""
        ok = self.requests - self.non_2xx
        return ok * self.events_per_request / self.duration_s if self.duration_s else 0.0


def _children_cpu_s() -> float:
    """CPU seconds used so far by waited-for child processes (wrk's share of the 2 cores)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_requests(path: Path, requests: list[BenchRequest], prefix: str) -> None:
    """Serialise requests in the record format replay_bodies.lua reads."""
    with open(path, "wb") as out:
        for request in requests:
            out.write(f"{request.method} {prefix}{request.path} {len(request.body)}\n".encode())
            for name, value in request.headers.items():
                out.write(f"{name}: {value}\n".encode())
            out.write(b"\n" + request.body)


def build_pool(ctx: PayloadContext, profile: str, size: int) -> list[BenchRequest]:
    return [PROFILES[profile](ctx) for _ in range(size)]


def run_wrk(
    target: str,
    requests: list[BenchRequest],
    duration_s: float,
    connections: int = 64,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkResult:
    """Run wrk against `target` cycling through `requests`; parse the script's JSON summary."""
    binary = shutil.which("wrk")
    if binary is None:
        raise WrkUnavailable("wrk is not installed (apt-get install wrk)")
    target = require_loopback(target)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        bodies = Path(tmp) / "requests.bin"
        write_requests(bodies, requests, urlsplit(target).path)
        argv = [
            binary,
            f"-t{threads}",
            f"-c{max(connections, threads)}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "-s",
            str(SCRIPT),
            target + "/",
            "--",
            str(bodies),
        ]
        cpu_before = _children_cpu_s()
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
        cpu_s = _children_cpu_s() - cpu_before
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line.removeprefix(RESULT_PREFIX))
            break
    else:
        raise RuntimeError(
            f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}"
        )
    errors = raw["errors"]
    return WrkResult(
        requests=raw["requests"],
        duration_s=raw["duration_us"] / 1e6,
        non_2xx=errors["status"],
        socket_errors={k: v for k, v in errors.items() if k != "status" and v},
        latency_ms={k: v / 1000 for k, v in raw["latency_us"].items()},
        events_per_request=sum(len(r.uuids) for r in requests) / len(requests),
        cpu_busy=cpu_s / (raw["duration_us"] / 1e6) if raw["duration_us"] else 0.0,
    )


def pool_context(token: str, batch_size: int | None, seed: int = 0) -> PayloadContext:
    """A deterministic payload context for building wrk's body pool."""
    return PayloadContext(token=token, batch_size=batch_size, rng=random.Random(seed))
