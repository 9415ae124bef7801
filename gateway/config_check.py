"""`gateway config check`: validate the effective configuration and print it as TOML, secrets redacted.

Each line names where its value came from (flag, env, file, default) and whether SIGHUP reloads it,
so the output answers "why is the gateway running with this value?". Secret settings (metadata
`secret`) print as `<redacted>`; settings that point at secret files print the path, never contents.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from gateway.config import ConfigError, ServeSettings, add_arguments, env_name
from gateway.config_file import add_config_argument, config_path, load_settings, read_config_file

REDACTED = "<redacted>"


def add_config_command(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate flags + env + config file and print the effective settings (secrets redacted)"
    )
    add_config_argument(check)
    add_arguments(check, ServeSettings)


def config_command(args: argparse.Namespace) -> int:
    from gateway.reload import RELOADABLE  # not at import: the CLI parser must not load prometheus_client

    environ = dict(os.environ)
    try:
        settings = load_settings(args, environ)
    except ConfigError as exc:
        print(f"gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    path = config_path(args, environ)
    from_file = read_config_file(path) if path else {}
    lines = [f"# effective configuration (flags > env > {path or 'no config file'} > defaults)"]
    for f in fields(settings):
        value = getattr(settings, f.name)
        if getattr(args, f.name, None) is not None:
            source = "flag"
        elif env_name(f.name) in environ:
            source = "env"
        elif f.name in from_file:
            source = "file"
        else:
            source = "default"
        note = f"# {source}{', SIGHUP' if f.name in RELOADABLE else ''}"
        if value is None:
            lines.append(f"# {f.name} is unset  {note}")
        elif f.metadata.get("secret") and value:
            lines.append(f"{f.name} = {toml_value(REDACTED)}  {note}")
        else:
            lines.append(f"{f.name} = {toml_value(value)}  {note}")
    print("\n".join(lines))
    return 0


def toml_value(value: Any) -> str:
    """A TOML literal for a settings value (strings as JSON-escaped basic strings, which TOML accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return orjson.dumps(str(value) if isinstance(value, Path) else value).decode()
