"""The TOML configuration file and the layering of every settings source.

Precedence: flags > `GATEWAY_<NAME>` env vars > the file (`--config FILE` or `GATEWAY_CONFIG`) >
defaults. File keys are the settings' names (`kafka_bootstrap_servers`, dashes allowed); values
are TOML scalars, or lists for repeatable settings; sizes may be strings (`spool_max_bytes = "4G"`).
An unknown key is an error, so a typo never silently leaves a default in place.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from dataclasses import Field, fields
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, ServeSettings, convert, merged_values, settings_from_args

CONFIG_ENV = "GATEWAY_CONFIG"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help=f"TOML file of settings; flags and env vars override it (env {CONFIG_ENV})",
    )


def config_path(args: argparse.Namespace, environ: dict[str, str]) -> Path | None:
    given = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    return Path(given) if given else None


def load_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServeSettings:
    """The effective, validated settings from flags, env, the config file and defaults."""
    environ = dict(os.environ) if environ is None else environ
    path = config_path(args, environ)
    base = read_config_file(path) if path else {}
    return settings_from_args(args, ServeSettings, environ, base=base)


def requested_workers(args: argparse.Namespace) -> int:
    """`--workers` as configured, read without validating the rest (validation imports the metrics)."""
    environ = dict(os.environ)
    path = config_path(args, environ)
    values = merged_values(args, ServeSettings, environ, read_config_file(path) if path else {})
    default = next(f.default for f in fields(ServeSettings) if f.name == "workers")
    return values.get("workers", default)


def read_config_file(path: Path, settings_class: type = ServeSettings) -> dict[str, Any]:
    """Field values from a TOML file; ConfigError names the file and the bad key."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
    known = {f.name: f for f in fields(settings_class)}
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {path}: unknown key {key!r}{hint}")
        try:
            values[name] = _from_toml(known[name], value)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    return values


def _from_toml(f: Field, value: Any) -> Any:
    if f.metadata.get("repeat"):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{f.name}: expected a list of strings")
        return convert(f, items)
    if isinstance(value, dict | list):
        raise ConfigError(f"{f.name}: expected a single value, not a {type(value).__name__}")
    if isinstance(value, bool):
        value = "true" if value else "false"
    return convert(f, str(value))
