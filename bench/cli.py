"""Command line: `python -m bench load ...` (one load run) and `python -m bench suite NAME ...`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.net import NotLoopbackError, require_loopback
from bench.payloads import PROFILES
from bench.report import summary_json, summary_table
from bench.runner import run_load
from bench.servers import ServerUnavailable
from bench.suites import SUITES, TOOLS, SuiteOptions, run_suite, suite_json, suite_table
from bench.worker import LoadConfig

MAX_DURATION_S = 3600.0


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type that converts with `kind` and rejects values <= 0."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _duration(text: str) -> float:
    value = _positive(float)(text)
    if value > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_DURATION_S:g} s")
    return value


def _add_load_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("load", help="generate load against one loopback target")
    p.add_argument("--target", required=True, help="base URL on loopback, e.g. http://127.0.0.1:8000")
    p.add_argument("--profile", choices=sorted(PROFILES), default="js-gzip")
    p.add_argument("--mode", choices=("open", "closed"), default=None, help="default: open if --rate given")
    p.add_argument("--rate", type=_positive(float), help="open loop: total requests per second")
    p.add_argument("--connections", type=_positive(int), default=64, help="total across processes")
    p.add_argument("--duration", type=_duration, default=10.0, help="seconds (<= 3600)")
    p.add_argument("--requests", type=_positive(int), help="stop after this many requests")
    p.add_argument("--processes", type=_positive(int), default=1, help="generator processes")
    p.add_argument("--timeout", type=_positive(float), default=30.0, help="per-request timeout, seconds")
    p.add_argument("--token", default="phc_bench_token")
    p.add_argument("--distinct-ids", type=_positive(int), default=1000, help="distinct_id pool size")
    p.add_argument("--batch-size", type=_positive(int), help="events per batch (default: the SDK's)")
    p.add_argument("--event-bytes", type=_positive(int), default=1024, help="size of a `single` event")
    p.add_argument("--replay-bytes", type=_positive(int), default=64 * 1024, help="snapshot data per /s/")
    p.add_argument("--max-pending", type=_positive(int), default=10_000, help="open loop in-flight cap")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", type=Path, help="write the full result as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and latency over time")
    p.add_argument("--acked-log", type=Path, help="write the uuid of every event answered 200")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _add_suite_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suite", help="run a benchmark suite against its own baselines")
    p.add_argument("name", choices=sorted([*SUITES, "sink", "recordings"]))
    p.add_argument("--duration", type=_duration, default=10.0, help="seconds per measurement")
    p.add_argument("--connections", type=_positive(int), default=64)
    p.add_argument("--wrk-threads", type=_positive(int), default=1)
    p.add_argument("--processes", type=_positive(int), default=1, help="python generator processes")
    p.add_argument("--open-events-per-s", type=_positive(float), default=1000.0, help="python-open offered load")
    p.add_argument("--workers", type=_positive(int), default=1, help="server processes (all targets)")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma list of {', '.join(TOOLS)}")
    p.add_argument("--scenarios", help="comma list of the suite's scenarios (e.g. single-1kb); default: all of them")
    p.add_argument(
        "--targets",
        help="comma list of the suite's targets (capture, kafka: nginx, aiohttp, gateway; upstream: "
        "upstream, nginx-proxy, gateway, gateway-as-received, gateway-passthrough); default: all of them",
    )
    p.add_argument(
        "--kafka-bootstrap-servers",
        help="broker for the gateway (needed by `suite kafka`); `suite sink`: default starts its own",
    )
    p.add_argument("--clickhouse-url", help="suite sink: ClickHouse HTTP URL (default: start 18.16 here)")
    p.add_argument("--rows", type=_positive(int), default=200_000, help="suite sink: messages in the topic")
    p.add_argument("--batch-rows", type=_positive(int), default=100_000, help="suite sink: flush size")
    p.add_argument("--no-kafka-engine", action="store_true", help="suite sink: skip the Kafka engine baseline")
    p.add_argument("--in-flight", type=_positive(int), default=2, help="suite sink: inserts in flight")
    p.add_argument("--sink-processes", type=_positive(int), nargs="+", default=[1, 2],
                   help="suite sink: `gateway sink --processes N` runs, one per N")  # fmt: skip
    p.add_argument("--replay-kb", default="50,200,500",
                   help="suite recordings: comma list of rrweb KB per /s/ request (before gzip)")
    p.add_argument("--gateway-command", help="command that runs the gateway CLI (default: autodetect)")
    p.add_argument("--token", default="phc_bench_token")
    p.add_argument("--json", type=Path, help="write all measurements as JSON")


def _load(args: argparse.Namespace) -> int:
    mode = args.mode or ("open" if args.rate else "closed")
    if mode == "open" and not args.rate:
        raise SystemExit("--mode open needs --rate")
    try:
        target = require_loopback(args.target)
    except NotLoopbackError as exc:
        raise SystemExit(f"refusing to load a non-loopback target: {exc}") from None
    config = LoadConfig(
        target=target,
        profile=args.profile,
        mode=mode,
        rate=args.rate,
        connections=args.connections,
        duration_s=args.duration,
        max_requests=args.requests,
        processes=args.processes,
        timeout_s=args.timeout,
        token=args.token,
        distinct_ids=args.distinct_ids,
        batch_size=args.batch_size,
        event_bytes=args.event_bytes,
        replay_bytes=args.replay_bytes,
        seed=args.seed,
        max_pending=args.max_pending,
        acked_log=str(args.acked_log) if args.acked_log else None,
    )
    summary = run_load(config, progress_stream=None if args.quiet else sys.stderr)
    print(summary_table(summary))
    if args.json:
        args.json.write_bytes(orjson.dumps(summary_json(summary), option=orjson.OPT_INDENT_2))
    if args.plot:
        from bench.plot import plot_summary

        plot_summary(summary, str(args.plot))
    return 0


def _sink_suite(args: argparse.Namespace) -> int:
    from bench.sink_suite import SinkSuiteOptions, run_sink_suite, sink_suite_table

    options = SinkSuiteOptions(
        rows=args.rows,
        kafka_bootstrap_servers=args.kafka_bootstrap_servers,
        clickhouse_url=args.clickhouse_url,
        batch_rows=args.batch_rows,
        in_flight=args.in_flight,
        processes=tuple(args.sink_processes),
        kafka_engine=not args.no_kafka_engine,
    )
    figures, notes = run_sink_suite(options)
    print(sink_suite_table(figures, notes, options))
    if args.json:
        payload = {"options": dataclasses.asdict(options), "figures": [dataclasses.asdict(f) for f in figures],
                   "notes": notes}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def _recordings_suite(args: argparse.Namespace) -> int:
    from bench.recordings_suite import recordings_table, run_recordings_suite

    sizes = [int(kb) for kb in args.replay_kb.split(",") if kb]
    command = args.gateway_command.split() if args.gateway_command else None
    figures = run_recordings_suite(sizes, args.duration, args.connections, args.token, command)
    print(recordings_table(figures, args.duration))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(f) for f in figures], indent=2))
    return 0


def _suite(args: argparse.Namespace) -> int:
    if args.name == "sink":
        return _sink_suite(args)
    if args.name == "recordings":
        return _recordings_suite(args)
    tools = tuple(t for t in args.tools.split(",") if t)
    unknown = set(tools) - set(TOOLS)
    if unknown:
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    options = SuiteOptions(
        duration_s=args.duration,
        connections=args.connections,
        wrk_threads=args.wrk_threads,
        processes=args.processes,
        open_events_per_s=args.open_events_per_s,
        workers=args.workers,
        token=args.token,
        tools=tools,
        targets=tuple(t for t in args.targets.split(",") if t) if args.targets else None,
        kafka_bootstrap_servers=args.kafka_bootstrap_servers,
        gateway_command=args.gateway_command.split() if args.gateway_command else None,
    )
    spec = SUITES[args.name]
    unknown = set(options.targets or ()) - set(spec.targets)
    if unknown:
        raise SystemExit(f"unknown targets for suite {args.name}: {', '.join(sorted(unknown))}")
    if args.scenarios:
        names = [n for n in args.scenarios.split(",") if n]
        unknown = set(names) - {s.name for s in spec.scenarios}
        if unknown:
            raise SystemExit(f"unknown scenarios for suite {args.name}: {', '.join(sorted(unknown))}")
        spec = dataclasses.replace(spec, scenarios=tuple(s for s in spec.scenarios if s.name in names))
    try:
        measurements, notes = run_suite(spec, options)
    except ServerUnavailable as exc:  # a server the whole suite needs (the upstream) did not start
        raise SystemExit(f"suite {args.name}: {exc}") from None
    print(suite_table(measurements, notes, options, spec.baselines))
    if args.json:
        args.json.write_text(json.dumps(suite_json(measurements, notes, options), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="PostHog gateway load tests")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_load_parser(sub)
    _add_suite_parser(sub)
    args = parser.parse_args(argv)
    return _load(args) if args.command == "load" else _suite(args)
