"""The effective settings as TOML for `config check`: each line says where its value came from
(flag, env, file, default) and whether SIGHUP reloads it. Secrets print as `<redacted>` (and a URL's
password too); settings that point at secret files print the path, never the contents."""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.settings.fields import REDACTED, config_path, env_name, read_config_file


def effective_config(
    settings: Any, args: argparse.Namespace, environ: Mapping[str, str], reloadable: Collection[str] = ()
) -> str:
    path = config_path(args, environ)
    from_file = read_config_file(path, type(settings)) if path else {}
    shown = redacted(settings)
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
            if "shown_default" in f.metadata:
                source += f": {f.metadata['shown_default']}"
        note = f"# {source}{', SIGHUP' if f.name in reloadable else ''}"
        if value is None:
            lines.append(f"# {f.name} is unset  {note}")
        else:
            lines.append(f"{f.name} = {toml_value(shown[f.name])}  {note}")
    return "\n".join(lines)


def redacted(settings: Any) -> dict[str, Any]:
    """Every setting's value, fit to print or log: secrets and URL passwords redacted."""
    values = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("secret") and value:
            value = REDACTED
        elif f.metadata.get("url") and value:
            value = tuple(map(redact_password, value)) if isinstance(value, tuple) else redact_password(value)
        values[f.name] = value
    return values


def redact_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", f":{REDACTED}@", 1)


def toml_value(value: Any) -> str:
    """A TOML literal for a settings value (strings as JSON-escaped basic strings, which TOML accepts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return orjson.dumps(str(value) if isinstance(value, Path) else value).decode()

