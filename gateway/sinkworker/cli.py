"""`gateway sink`: its flags (the settings machinery of `gateway.settings`), `--check`, and the run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable

import uvloop

from gateway.core import stack_dump
from gateway.settings import ConfigError, SinkSettings, add_arguments, add_config_argument, load
from gateway.settings.check import effective_config, redacted
from gateway.settings.fields import check_env, warn_unknown_env

log = logging.getLogger("gateway.sink")


def add_sink_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config`, every sink setting's flag and `--check` to `parser`."""
    add_config_argument(parser)
    add_arguments(parser, SinkSettings)
    parser.add_argument(
        "--check", action="store_true",
        help="validate flags + env + config file, print the effective settings (secrets redacted) and exit",
    )
    return parser


def sink_command(args: argparse.Namespace) -> int:
    """`gateway sink [--check]`; a bad setting raises ConfigError (printed as one line, exit 2)."""
    settings = check_components(load(SinkSettings, args))
    if args.check:
        check_env(os.environ)
        print(effective_config(settings, args, os.environ))
        return 0
    if settings.processes > 1 and not settings.init_schema:
        return supervise_sinks(settings)
    return run_sink(settings)


def check_components(settings: SinkSettings) -> SinkSettings:
    """What only reading them can check: the team map and the spool keys."""
    from gateway.sinkworker.teams import parse_team_map
    from gateway.spool.crypto import SpoolKeyError, load_keyring

    try:
        parse_team_map(settings.team_map)
    except (OSError, ValueError) as exc:
        raise ConfigError("team_map", str(exc)) from exc
    try:
        load_keyring(settings.spool_encryption_key_file)
    except SpoolKeyError as exc:
        raise ConfigError("spool_encryption_key_file", str(exc), value=settings.spool_encryption_key_file) from exc
    return settings


def supervise_sinks(settings: SinkSettings) -> int:
    """`--processes N`: N sink processes in one consumer group under a supervising parent."""
    import gateway.sinkworker.app  # noqa: F401  imported once here, not again by every restarted child
    from gateway.logs import configure_logging
    from gateway.sinkworker.supervisor import SinkSupervisor

    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_env(os.environ)
    return SinkSupervisor(settings, run_sink).run()


def run_sink(settings: SinkSettings, on_running: Callable[[], None] = lambda: None) -> int:
    """Run until SIGTERM/SIGINT, then flush, commit and return 0; `--init-schema` only creates the table.
    `on_running` is called once the sink consumes."""
    from gateway.logs import configure_logging  # with prometheus_client: not at CLI parser build

    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_env(os.environ)
    log.debug("sink settings", extra={"settings": redacted(settings)})

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stack_dump.install(loop)
        from gateway.sinkworker.app import serve  # heavy: kept out of `gateway --help` and `serve`

        return await serve(settings, stop, on_running)

    return uvloop.run(main())

