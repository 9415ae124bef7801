"""`gateway sink`: argparse flags (each also read from `GATEWAY_<FLAG_NAME>`) and the entry point."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from enum import Enum
from typing import Any

import uvloop

from gateway.core.startup import StartupError
from gateway.sinkworker.settings import SinkSettings

HELP = {
    "clickhouse": "ClickHouse target: chdb://PATH (embedded, default) or http(s)://[user:pass@]host:8123",
    "clickhouse_url": "ClickHouse HTTP URL; overrides --clickhouse",
    "database": "database of the events table",
    "table": "events table name",
    "init_schema": "create the events table (if missing) and exit",
    "retention_days": "TTL in days where the server supports it; 0 = keep forever",
    "kafka_bootstrap_servers": "Kafka bootstrap servers (source and DLQ)",
    "topics": "comma-separated topics to consume",
    "group_id": "Kafka consumer group",
    "session_timeout_ms": "consumer group session timeout",
    "data_dir": "drain every spool of this gateway --data-dir instead of Kafka (embedded mode)",
    "spool_dir": "drain this one spool directory (e.g. DATA_DIR/spool/worker-0) instead of Kafka",
    "spool_reader_name": "name of the persisted spool cursor",
    "spool_encryption_key_file": "keys of an encrypted spool (as gateway serve's; or GATEWAY_SPOOL_ENCRYPTION_KEYS)",
    "dlq_topic": "dead-letter Kafka topic",
    "dlq_dir": "dead letters as JSON lines in this directory (default: DATA_DIR/sink-dlq, SPOOL_DIR-dlq)",
    "batch_rows": "flush a batch at this many rows",
    "batch_bytes": "flush a batch at this many JSONEachRow bytes",
    "batch_age_ms": "flush a batch this long after its first message",
    "max_in_flight": "concurrent inserts (chdb always uses 1)",
    "fetch_max_records": "messages per poll",
    "compression": "HTTP insert body compression",
    "ip_property": "$ip from the capture-time client ip: set (overwrite), if-missing, or drop",
    "team_map": "token→team_id map: token=id,... or JSON object (inline or file path)",
    "strict_teams": "send events with tokens missing from --team-map to the DLQ (default: hashed team id)",
    "metrics_port": "serve Prometheus /metrics on this port (0 = off)",
    "shutdown_timeout_s": "on SIGTERM, wait this long for in-flight batches before exiting",
    "log_level": "logging level",
}
CHOICES = {"compression": ("none", "gzip"), "log_level": ("DEBUG", "INFO", "WARNING", "ERROR")}
TRUE = {"1", "true", "yes", "on"}


def _env(name: str) -> str | None:
    return os.environ.get(f"GATEWAY_{name.upper()}")


def add_sink_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add every sink flag to `parser`; defaults come from GATEWAY_<FLAG_NAME> when set."""
    for field in dataclasses.fields(SinkSettings):
        _add_flag(parser, field.name, field.default)
    _add_flag(parser, "clickhouse_url", "")
    parser.set_defaults(handler=lambda args: run_sink(settings_from_args(args)))
    return parser


def _add_flag(parser: argparse.ArgumentParser, name: str, default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    env = _env(name)
    help_text = f"{HELP[name]} [env GATEWAY_{name.upper()}]"
    if isinstance(default, bool):
        value = env.strip().lower() in TRUE if env is not None else default
        parser.add_argument(flag, action="store_true", default=value, help=help_text)
        return
    kind: Any = type(default)
    choices = CHOICES.get(name)
    if isinstance(default, tuple):
        kind = _comma_list
    elif isinstance(default, Enum):
        choices = tuple(member.value for member in type(default))
        default = default.value
        kind = str
    value = kind(env) if env is not None else default
    parser.add_argument(
        flag, type=kind, default=value, choices=choices, help=f"{help_text} (default: %(default)s)"
    )


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def settings_from_args(args: argparse.Namespace) -> SinkSettings:
    """Build SinkSettings from parsed flags (`--clickhouse-url` wins over `--clickhouse`)."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(SinkSettings)}
    if args.clickhouse_url:
        values["clickhouse"] = args.clickhouse_url
    return dataclasses.replace(SinkSettings(), **values)


def run_sink(settings: SinkSettings) -> int:
    """Run until SIGTERM/SIGINT, then flush, commit and return 0; `--init-schema` only creates the table."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        from gateway.sinkworker.app import serve  # heavy: kept out of `gateway --help` and `serve`

        return await serve(settings, stop)

    try:
        return uvloop.run(main())
    except StartupError as error:  # until gateway.cli reports start-up errors itself
        print(error.line(), file=sys.stderr)
        return error.exit_code


def main(argv: list[str] | None = None) -> int:
    """Standalone `python -m gateway.sinkworker.cli` until the main CLI mounts the sub-parser."""
    args = add_sink_arguments(argparse.ArgumentParser(prog="gateway sink")).parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
