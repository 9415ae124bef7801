"""`gateway recordings sink|export|expire`: flags from the settings machinery, then the run."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import uvloop

from gateway.core import stack_dump
from gateway.settings import ConfigError, add_arguments, add_config_argument, load
from gateway.settings.check import effective_config
from gateway.settings.fields import check_env, warn_unknown_env
from gateway.settings.recordings import RecordingsSettings


def add_recordings_command(commands: argparse._SubParsersAction) -> None:
    recordings = commands.add_parser("recordings", help="session recordings: store, export, expire")
    sub = recordings.add_subparsers(dest="recordings_command", required=True)
    sink = sub.add_parser("sink", help="move replay snapshots (Kafka or the spools) into blocks + ClickHouse")
    export = sub.add_parser("export", help="write one session's rrweb events as a JSON array (for rrweb's player)")
    expire = sub.add_parser("expire", help="delete recordings older than the retention now (the sink does it hourly)")
    for parser in (sink, export, expire):
        add_config_argument(parser)
        add_arguments(parser, RecordingsSettings)
    sink.add_argument("--check", action="store_true",
                      help="validate flags + env + config file, print the effective settings (secrets redacted) "
                      "and exit")
    export.add_argument("session_id", help="the $session_id to export")
    export.add_argument("--out", default="-", help="output file, or - for stdout (default: -)")
    expire.add_argument("--older-than-days", type=int, default=None,
                        help="delete recordings whose last event is older (default: --recordings-retention-days)")


def recordings_command(args: argparse.Namespace) -> int:
    settings = check_components(load(RecordingsSettings, args))
    command = args.recordings_command
    if command == "sink" and args.check:
        check_env(os.environ)
        print(effective_config(settings, args, os.environ))
        return 0
    from gateway.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_env(os.environ)
    from gateway.recordings import app

    if command == "export":
        return _report_errors(command, lambda: app.export_session(settings, args.session_id, args.out))
    if command == "expire":
        days = settings.recordings_retention_days if args.older_than_days is None else args.older_than_days
        if days <= 0:
            raise ConfigError("older_than_days", "must be > 0", value=days)
        return _report_errors(command, lambda: app.expire_now(settings, days))

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stack_dump.install(loop)
        return await app.run_sink(settings, stop)

    return uvloop.run(main())


def _report_errors(command: str, run: object) -> int:
    from gateway.clickhouse.writer import WriteError
    from gateway.recordings.export import SessionNotFound
    from gateway.recordings.storage import StorageError

    try:
        return uvloop.run(run())  # type: ignore[operator]
    except (SessionNotFound, LookupError) as exc:
        print(f"gateway recordings {command}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `export --out - | head`: gateway/cli.py stops quietly, as `spool dump` does
        raise
    except (StorageError, WriteError, OSError) as exc:
        print(f"gateway recordings {command}: {exc}", file=sys.stderr)
        return 2


def check_components(settings: RecordingsSettings) -> RecordingsSettings:
    from gateway.sinkworker.teams import parse_team_map

    try:
        parse_team_map(settings.team_map)
    except (OSError, ValueError) as exc:
        raise ConfigError("team_map", str(exc)) from exc
    return settings
