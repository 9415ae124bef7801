"""Benchmark suites: scenarios x servers x tools in one run, each figure with its ratio to baselines.

A suite starts each server in turn (nginx `return 200`, the bare aiohttp app, then the gateway), so
only one server competes with the load generator for the 2 cores at a time. Figures of the same
scenario and tool are divided by the baselines' figures from the same run: absolute numbers drift
1.5-2x between runs on this machine, ratios much less.
`suite upstream` starts a stand-in PostHog upstream (bench/upstream_app.py) for the whole run and
measures, one at a time in front of it, nginx proxy_pass (the dumb-proxy baseline), the gateway in
reverse-proxy forward mode, with --upstream-forward-as-received and with --upstream-passthrough; the
bare upstream alone is the other baseline. To add a suite (sink worker, ...), add a SuiteSpec to
SUITES: scenarios, targets, baselines.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from bench.runner import run_load
from bench.servers import ManagedServer, ServerUnavailable, baseline_app, gateway, nginx, upstream_app
from bench.worker import LoadConfig
from bench.wrk import WrkUnavailable, build_pool, pool_context, run_wrk

BASELINES = ("nginx", "aiohttp")
TOOLS = ("wrk", "python", "python-open")


@dataclass(frozen=True)
class Scenario:
    """One request shape: a payload profile and its batch size."""

    name: str
    profile: str
    batch_size: int | None = None
    description: str = ""


@dataclass(frozen=True)
class SuiteSpec:
    """Scenarios to run, the servers to measure, which of them are baselines, and what the gateway needs.

    With `needs_upstream` the suite runs bench/upstream_app.py for its whole duration; the target
    `upstream` measures it directly, the others proxy to it.
    """

    scenarios: tuple[Scenario, ...]
    needs_kafka: bool = False
    targets: tuple[str, ...] = (*BASELINES, "gateway")
    baselines: tuple[str, ...] = BASELINES
    needs_upstream: bool = False


CAPTURE_SCENARIOS = (
    Scenario("single-1kb", "single", None, "one 1 KB JSON event, POST /e/"),
    Scenario("e-gzip-50", "js-gzip", 50, "posthog-js gzip batch of 50, POST /e/ (text/plain, magic bytes)"),
    Scenario("batch-gzip-50", "node-batch", 50, "posthog-node batch of 50, POST /batch/ (Content-Encoding)"),
)

FLAGS_SCENARIO = Scenario("flags-v2", "flags", None, "posthog-node POST /flags/?v=2, proxied to the upstream")
UPSTREAM_BASELINES = ("nginx-proxy", "upstream")
UPSTREAM_TARGETS = ("upstream", "nginx-proxy", "gateway", "gateway-as-received", "gateway-passthrough")

SUITES: dict[str, SuiteSpec] = {
    "capture": SuiteSpec(CAPTURE_SCENARIOS),
    "kafka": SuiteSpec(CAPTURE_SCENARIOS, needs_kafka=True),
    "upstream": SuiteSpec(
        (*CAPTURE_SCENARIOS, FLAGS_SCENARIO),
        targets=UPSTREAM_TARGETS,
        baselines=UPSTREAM_BASELINES,
        needs_upstream=True,
    ),
}


@dataclass
class SuiteOptions:
    """Knobs shared by every measurement of a suite run."""

    duration_s: float = 10.0
    connections: int = 64
    wrk_threads: int = 1
    processes: int = 1
    open_events_per_s: float = 1000.0
    workers: int = 1
    token: str = "phc_bench_token"
    tools: tuple[str, ...] = TOOLS
    targets: tuple[str, ...] | None = None  # None: the suite's own targets
    kafka_bootstrap_servers: str | None = None
    gateway_command: list[str] | None = None


@dataclass
class Measurement:
    """One figure set: a scenario measured by one tool against one server."""

    scenario: str
    target: str
    tool: str
    req_per_s: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_200: int = 0
    generator_cpu: float = 0.0
    generator_lag_ms: float = 0.0
    server_cpu: float = 0.0
    error: str | None = None
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def req_per_server_cpu_s(self) -> float:
        """Requests per CPU-second the server spent: throughput independent of how much CPU it got."""
        return self.req_per_s / self.server_cpu if self.server_cpu else 0.0


def _measure_wrk(url: str, scenario: Scenario, options: SuiteOptions) -> Measurement:
    pool = build_pool(pool_context(options.token, scenario.batch_size), scenario.profile, 200)
    result = run_wrk(url, pool, options.duration_s, options.connections, options.wrk_threads)
    return Measurement(
        scenario.name,
        "",
        "wrk",
        req_per_s=result.req_per_s,
        events_per_s=result.events_per_s,
        p50_ms=result.latency_ms["p50"],
        p99_ms=result.latency_ms["p99"],
        non_200=result.non_2xx + sum(result.socket_errors.values()),
        generator_cpu=result.cpu_busy,
    )


def _measure_python(url: str, scenario: Scenario, options: SuiteOptions, open_loop: bool) -> Measurement:
    config = LoadConfig(
        target=url,
        profile=scenario.profile,
        mode="open" if open_loop else "closed",
        rate=options.open_events_per_s / (scenario.batch_size or 1) if open_loop else None,
        connections=options.connections,
        duration_s=options.duration_s,
        processes=options.processes,
        token=options.token,
        batch_size=scenario.batch_size,
    )
    summary = run_load(config, progress_stream=None)
    return Measurement(
        scenario.name,
        "",
        "python-open" if open_loop else "python",
        req_per_s=summary.req_per_s,
        events_per_s=summary.events_per_s,
        p50_ms=summary.percentile_ms(50),
        p99_ms=summary.percentile_ms(99),
        non_200=summary.requests - summary.statuses.get("200", 0),
        generator_cpu=sum(summary.cpu_busy),
        generator_lag_ms=summary.max_lag_s * 1000,
    )


MEASURES: dict[str, Callable[[str, Scenario, SuiteOptions], Measurement]] = {
    "wrk": _measure_wrk,
    "python": lambda url, scenario, options: _measure_python(url, scenario, options, open_loop=False),
    "python-open": lambda url, scenario, options: _measure_python(url, scenario, options, open_loop=True),
}


def _server(target: str, options: SuiteOptions, upstream: ManagedServer | None = None) -> ManagedServer:
    """A not yet started server for `target`; with a running `upstream`, the proxies in front of it."""
    if upstream is None:
        if target == "nginx":
            return nginx(options.workers)
        if target == "aiohttp":
            return baseline_app(options.workers)
        return gateway(options.workers, options.kafka_bootstrap_servers, options.gateway_command)
    if target == "nginx-proxy":
        return nginx(options.workers, upstream=f"127.0.0.1:{upstream.port}", name=target)
    extra = ["--upstream", upstream.url, "--upstream-events-mode", "forward"]
    if target == "gateway-passthrough":
        extra.append("--upstream-passthrough")
    if target == "gateway-as-received":
        extra.append("--upstream-forward-as-received")
    return gateway(
        options.workers, options.kafka_bootstrap_servers, options.gateway_command, tuple(extra), name=target
    )


def run_suite(
    spec: SuiteSpec, options: SuiteOptions, log: TextIO = sys.stderr
) -> tuple[list[Measurement], list[str]]:
    """Measure every scenario x target x tool; return measurements (with ratios) and notes."""
    if spec.needs_kafka and not options.kafka_bootstrap_servers:
        raise ValueError("this suite needs --kafka-bootstrap-servers")
    measurements: list[Measurement] = []
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(upstream_app(options.workers)) if spec.needs_upstream else None
        for target in options.targets or spec.targets:
            try:
                server = upstream if target == "upstream" and upstream else _server(target, options, upstream)
                with contextlib.nullcontext(server) if server is upstream else server:
                    for scenario in spec.scenarios:
                        for tool in options.tools:
                            log.write(f"suite: {scenario.name} -> {target} ({tool}, {options.duration_s:g} s)\n")
                            log.flush()
                            measurements.append(_run_one(server, target, tool, scenario, options))
            except ServerUnavailable as exc:
                notes.append(f"{target} skipped: {exc}")
                log.write(f"suite: {target} skipped: {exc}\n")
    _add_ratios(measurements, spec.baselines)
    return measurements, notes


def _run_one(
    server: ManagedServer, target: str, tool: str, scenario: Scenario, options: SuiteOptions
) -> Measurement:
    cpu_before = server.cpu_seconds()
    try:
        measurement = MEASURES[tool](server.url, scenario, options)
    except (WrkUnavailable, RuntimeError) as exc:
        measurement = Measurement(scenario.name, target, tool, error=str(exc))
    measurement.target = target
    measurement.server_cpu = (server.cpu_seconds() - cpu_before) / options.duration_s
    return measurement


def _add_ratios(measurements: list[Measurement], baselines: tuple[str, ...] = BASELINES) -> None:
    """Divide each req/s (and req per server CPU-second) by the baseline's, same scenario and tool."""
    index = {(m.scenario, m.tool, m.target): m for m in measurements if m.error is None}
    for m in measurements:
        for baseline in baselines:
            base = index.get((m.scenario, m.tool, baseline))
            if base is None or m.error is not None:
                continue
            if base.req_per_s:
                m.ratios[baseline] = m.req_per_s / base.req_per_s
            if base.req_per_server_cpu_s:
                m.ratios[f"{baseline}_per_cpu"] = m.req_per_server_cpu_s / base.req_per_server_cpu_s


def suite_table(
    measurements: list[Measurement],
    notes: list[str],
    options: SuiteOptions,
    baselines: tuple[str, ...] = BASELINES,
) -> str:
    """The suite's figures as a fixed-width table, followed by caveats that apply to this machine.

    One `x BASELINE` column per baseline (req/s ratio); the per-CPU ratio is to the last baseline
    (the bare aiohttp app, or the bare upstream).
    """
    fair = baselines[-1]
    tw = max([8, *(len(m.target) for m in measurements)])
    ratio_cols = "".join(f" {'x ' + b:>{max(8, len(b) + 2)}}" for b in baselines)
    header = (
        f"{'scenario':<14} {'target':<{tw}} {'tool':<12} {'req/s':>9} {'events/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'non-200':>8}{ratio_cols} {'gen cpu':>7} {'srv cpu':>7} "
        f"{'req/cpu-s':>9} {'x ' + fair + '/cpu':>13}"
    )
    lines = [header, "-" * len(header)]
    for m in measurements:
        if m.error:
            lines.append(f"{m.scenario:<14} {m.target:<{tw}} {m.tool:<12} error: {m.error}")
            continue
        ratio = {k: f"{v:.2f}" for k, v in m.ratios.items()}
        ratio_values = "".join(f" {ratio.get(b, '-'):>{max(8, len(b) + 2)}}" for b in baselines)
        lines.append(
            f"{m.scenario:<14} {m.target:<{tw}} {m.tool:<12} {m.req_per_s:>9,.0f} {m.events_per_s:>10,.0f} "
            f"{m.p50_ms:>8.2f} {m.p99_ms:>8.2f} {m.non_200:>8,}{ratio_values} {m.generator_cpu:>7.0%} "
            f"{m.server_cpu:>7.0%} {m.req_per_server_cpu_s:>9,.0f} {ratio.get(fair + '_per_cpu', '-'):>13}"
        )
    lines += [
        "",
        f"wrk: {options.wrk_threads} thread(s), {options.connections} connections, closed loop, "
        "max throughput; latency is service time at saturation (not coordinated-omission corrected).",
        f"python: aiohttp client, {options.processes} process(es), {options.connections} connections, "
        f"closed loop. python-open: constant {options.open_events_per_s:g} events/s (req/s = events/s / "
        "batch size), latency from each request's scheduled send time (coordinated-omission correct).",
        "gen cpu / srv cpu: CPU the load generator / the server used (100% = one core). They share "
        "this machine's 2 cores (with anything else running), so req/s is what the server achieved on "
        "the CPU it got; req/cpu-s (req/s per server core) is the figure least disturbed by that. "
        "Compare ratios from the same run, not absolutes.",
        *notes,
    ]
    for m in measurements:
        if m.tool == "python" and m.generator_cpu >= 0.9:
            lines.append(
                f"{m.scenario} -> {m.target}: python closed loop was generator-bound (client ceiling)."
            )
        if m.tool == "python-open" and m.generator_lag_ms > 50:
            lines.append(
                f"{m.scenario} -> {m.target}: open-loop schedule fell {m.generator_lag_ms:.0f} ms behind "
                "(generator or machine overloaded; latency includes that wait)."
            )
    return "\n".join(lines)


def suite_json(measurements: list[Measurement], notes: list[str], options: SuiteOptions) -> dict[str, Any]:
    return {
        "options": asdict(options),
        "measurements": [asdict(m) | {"req_per_server_cpu_s": m.req_per_server_cpu_s} for m in measurements],
        "notes": notes,
    }
