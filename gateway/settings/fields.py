"""The field machinery every command's settings use: one dataclass field = one flag, one
`GATEWAY_<NAME>` env var and one TOML key, with its help text and default shown in `--help`.

Precedence: flags > env vars > the TOML file (`--config FILE` or `GATEWAY_CONFIG`) > defaults.
Field metadata: `help` (required), `parse` (text → value; default from the default's type),
`repeat` (flag repeatable, env comma-separated, TOML list), `separator` (env separator of a repeat
field), `split` (each flag value of a repeat field is also comma-separated), `secret` (never shown),
`shown_default` (the text `--help` and `config check` show when the real default is applied elsewhere),
`aliases` (more flag names, e.g. `--from` for `--rebuild-from`).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from gateway.core.startup import CONFIG_EXIT, StartupError

MiB = 1024 * 1024
GiB = 1024 * MiB
ENV_PREFIX = "GATEWAY_"
CONFIG_ENV = "GATEWAY_CONFIG"
REDACTED = "<redacted>"
# GATEWAY_* variables that are read but are not settings: an unknown one is almost always a typo.
NOT_SETTINGS = frozenset({
    CONFIG_ENV,
    "GATEWAY_SPOOL_ENCRYPTION_KEYS",  # the keys themselves (gateway/spool/crypto.py), never a flag
    "GATEWAY_GDPR_AUDIT_LOG", "GATEWAY_GDPR_AUDIT_KEY_FILE",  # `gateway gdpr` (gateway/gdpr/arguments.py)
    "GATEWAY_IMAGE",  # deploy/compose.yaml's image name
    "GATEWAY_CONFORMANCE_DUMP", "GATEWAY_REQUIRE_SHARED",  # test suite only
})
_UNSHOWN = object()
# Every command's settings class (see `command_settings`): one env file or TOML file can serve them all.
COMMANDS: list[type] = []

log = logging.getLogger("gateway.settings")


class ConfigError(StartupError, ValueError):
    """A setting cannot be used: `<setting> (<value>): <why>`, exit code 2."""

    def __init__(self, what: str, why: str, *, value: object = _UNSHOWN) -> None:
        super().__init__(what, value, why, exit_code=CONFIG_EXIT)

    def __str__(self) -> str:
        if self.value is _UNSHOWN:
            return f"{self.what}: {self.why}"
        return f"{self.what} ({self.value}): {self.why}"


def command_settings(settings_class: type) -> type:
    """Register a command's settings: their names are known to every command's env and file checks."""
    COMMANDS.append(settings_class)
    return settings_class


def size(text: str) -> int:
    """Sizes accept plain bytes or a K/M/G (binary) suffix: 512K, 20M, 4G."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1024, "M": MiB, "G": GiB}.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    try:
        return int(float(number) * factor)
    except ValueError:
        raise ValueError("expected a size such as 512K, 20M or 4G") from None


def choice(*choices: str, fold_case: bool = False) -> Callable[[str], str]:
    """One of `choices`; with `fold_case`, any spelling of it (the lower-case one is kept)."""

    def parse(text: str) -> str:
        value = text.lower() if fold_case else text
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(c or '(empty)' for c in choices)}")
        return value

    return parse


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown_default(f: Field) -> str:
    """The default as a person reads it: `--help` and `config check` print this."""
    if "shown_default" in f.metadata:
        return f.metadata["shown_default"]
    default = f.default if f.default is not MISSING else None
    if default is None or default == "" or default == ():
        return "none"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    if f.metadata.get("parse") is size:
        return size_text(default)
    return str(default)


def size_text(value: int) -> str:
    """4294967296 → 4G: a size as `size` reads it."""
    for suffix, factor in (("G", GiB), ("M", MiB), ("K", 1024)):
        if value and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """One flag per field; unset flags stay None so env, file and defaults can fill them in."""
    for f in fields(settings_class):
        help_text = f"{f.metadata['help']} (env {env_name(f.name)}; default: {shown_default(f)})"
        help_text = help_text.replace("%", "%%")
        names = [flag_name(f.name), *f.metadata.get("aliases", ())]
        if f.metadata.get("repeat"):
            parser.add_argument(*names, action="append", default=None, help=help_text, metavar=f.name.upper(),
                                dest=f.name)
        elif isinstance(f.default, bool):  # a bare `--flag` means true; `--flag false` is also accepted
            parser.add_argument(*names, nargs="?", const="true", default=None, help=help_text, metavar="BOOL",
                                dest=f.name)
        else:
            parser.add_argument(*names, default=None, help=help_text, metavar=f.name.upper(), dest=f.name)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help=f"TOML file of settings; flags and env vars override it (env {CONFIG_ENV})",
    )


def config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    given = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    return Path(given) if given else None


def load(settings_class: type, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Any:
    """The effective settings from flags, env, the config file and defaults, value-checked."""
    environ = os.environ if environ is None else environ
    path = config_path(args, environ)
    base = read_config_file(path, settings_class) if path else {}
    return settings_from_args(args, settings_class, environ, base)


def settings_from_args(
    args: argparse.Namespace,
    settings_class: type,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Any:
    """Flags over env vars over `base` (the config file) over defaults; ConfigError names a bad one."""
    return settings_class(**merged_values(args, settings_class, environ, base)).validate()


def merged_values(
    args: argparse.Namespace,
    settings_class: type,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The explicitly set field values (flags over env over `base`), converted but not validated."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = dict(base or {})
    for f in fields(settings_class):
        raw: Any = getattr(args, f.name, None)
        if raw is None and env_name(f.name) in environ:
            env_value = environ[env_name(f.name)]
            raw = _env_list(env_value, f.metadata.get("separator", ",")) if f.metadata.get("repeat") else env_value
        if raw is None:
            continue
        values[f.name] = convert(f, raw)
    return values


def _env_list(value: str, separator: str) -> list[str]:
    """A repeatable setting's env value: `a, b` is a and b (a comma list's spaces are never part of a value)."""
    items = value.split(separator)
    return [item.strip() for item in items] if separator == "," else items


def requested(settings_class: type, args: argparse.Namespace, name: str) -> Any:
    """One setting as configured, without checking the others."""
    environ = os.environ
    path = config_path(args, environ)
    values = merged_values(args, settings_class, environ, read_config_file(path, settings_class) if path else {})
    return values.get(name, settings_class.__dataclass_fields__[name].default)


def convert(f: Field, raw: Any) -> Any:
    """A field's value from its text (or list of texts, for repeatable fields)."""
    if f.metadata.get("repeat"):
        items: Iterable[str] = raw
        if f.metadata.get("split"):
            items = [part for item in raw for part in item.split(",")]
        return tuple(item.strip() if f.metadata.get("split") else item for item in items if item)
    parse = f.metadata.get("parse") or _type_parser(f)
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f.name, str(exc), value=shown_value(f, raw)) from exc


def shown_value(f: Field, value: Any) -> Any:
    """A value as an error message shows it: secrets redacted, lists comma-joined."""
    if f.metadata.get("secret") and value:
        return REDACTED
    if value is None:
        return "unset"
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else value


def _type_parser(f: Field) -> Callable[[str], Any]:
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):
        return _boolean
    if isinstance(default, int):
        return _typed(int, "an integer")
    if isinstance(default, float):
        return _typed(float, "a number")
    return str


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _typed(kind: type, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"expected {what}") from None

    return parse


def read_config_file(path: Path, settings_class: type) -> dict[str, Any]:
    """Field values from a TOML file; ConfigError names the file and the bad key."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("config file", exc.strerror or str(exc), value=path) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config file", f"invalid TOML: {exc}", value=path) from exc
    known = {f.name: f for f in fields(settings_class)}
    elsewhere = {f.name for command in COMMANDS for f in fields(command)}  # another command's: skipped
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            if name in elsewhere:
                continue
            raise ConfigError("config file", f"unknown key {key!r}{_did_you_mean(name, elsewhere)}", value=path)
        try:
            values[name] = _from_toml(known[name], value)
        except ConfigError as exc:
            raise ConfigError(exc.what, f"{exc.why} (in {path})", value=exc.value) from exc
    return values


def _from_toml(f: Field, value: Any) -> Any:
    if f.metadata.get("repeat"):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f.name, "expected a list of strings", value=value)
        return convert(f, items)
    if isinstance(value, dict | list):
        raise ConfigError(f.name, f"expected a single value, not a {type(value).__name__}", value=value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return convert(f, str(value))


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), 1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """One message per `GATEWAY_*` variable that no command reads, with the closest known name."""
    known = set(NOT_SETTINGS)
    for settings_class in COMMANDS:
        known |= {env_name(f.name) for f in fields(settings_class)}
    return [f"{name}: unknown environment variable, ignored{_did_you_mean(name, known)}"
            for name in sorted(environ) if name.startswith(ENV_PREFIX) and name not in known]


def check_env(environ: Mapping[str, str]) -> None:
    """`config check`: an unknown `GATEWAY_*` variable is an error."""
    problems = unknown_env(environ)
    if problems:
        name, _, why = problems[0].partition(": ")
        raise ConfigError(name, why.replace(", ignored", ""))


def warn_unknown_env(environ: Mapping[str, str]) -> None:
    """At start-up: one warning line per unknown `GATEWAY_*` variable."""
    for problem in unknown_env(environ):
        log.warning(problem)
