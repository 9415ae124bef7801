"""`gateway config check`: validate the effective `gateway serve` configuration (values, the
components built from them, no unknown `GATEWAY_*` variable) and print it as TOML, secrets redacted.
`gateway sink --check` does the same for the sink."""

from __future__ import annotations

import argparse
import os

from gateway.settings import ServeSettings, add_arguments, add_config_argument, load
from gateway.settings.check import effective_config
from gateway.settings.fields import check_env


def add_config_command(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate flags + env + config file and print the effective settings (secrets redacted)"
    )
    add_config_argument(check)
    add_arguments(check, ServeSettings)


def config_command(args: argparse.Namespace) -> int:
    """Raises ConfigError (one line, exit 2) for an invalid configuration."""
    # Not at import: the CLI parser must not load prometheus_client.
    from gateway.http.components import check_components
    from gateway.reload import RELOADABLE

    check_env(os.environ)
    settings = check_components(load(ServeSettings, args))
    print(effective_config(settings, args, os.environ, RELOADABLE))
    return 0
