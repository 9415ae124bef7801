"""The composition root: every component `gateway serve` runs with, built once from the settings.

`build_components` is what `gateway serve` runs at start (each worker serves with the result) and what
`gateway config check` runs; a value that cannot be used is a ConfigError naming its setting. The
sink is built per worker from these (its spool directory is the worker's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gateway.edge.aliases import aliased_paths
from gateway.edge.setup import Edge
from gateway.http.capture import RouteSpec
from gateway.privacy.policy import PrivacyPolicy
from gateway.proxy.routes import PROXY_FAMILIES, PROXY_ROUTES
from gateway.settings import ConfigError, ServeSettings
from gateway.settings.secrets import read_secret
from gateway.spool.crypto import Keyring, SpoolKeyError, load_keyring
from gateway.upstream.hosts import Upstreams


@dataclass(frozen=True, slots=True)
class Components:
    upstreams: Upstreams
    keyring: Keyring | None  # every spool writer and reader of the gateway gets the spool keys from here
    edge: Edge
    privacy: PrivacyPolicy | None
    flags_api_key: str  # local flag evaluation's personal API key (file or setting)
    gdpr_audit_key: bytes | None


def capture_routes(settings: ServeSettings) -> list[RouteSpec]:
    return [
        RouteSpec("events", ("/e", "/i/v0/e", "/capture", "/track", "/engage"), settings.event_body_limit),
        RouteSpec("batch", ("/batch",), settings.batch_body_limit),
        RouteSpec("replay", ("/s",), settings.replay_body_limit, replay=True),
    ]


def route_families(settings: ServeSettings, upstreams: Upstreams) -> list[str]:
    """Every route family this configuration can serve (`--routes` picks among them)."""
    names = [spec.name for spec in capture_routes(settings)]
    if upstreams.enabled:
        names += PROXY_FAMILIES
    return names


def build_components(settings: ServeSettings) -> Components:
    """Build from validated settings; checks what only building can: rate notation, CIDRs, TLS and key
    files, privacy patterns, upstream URLs."""
    try:
        keyring = load_keyring(settings.spool_encryption_key_file)
    except SpoolKeyError as exc:
        raise ConfigError("spool_encryption_key_file", str(exc), value=settings.spool_encryption_key_file) from exc
    try:
        upstreams = Upstreams.from_settings(settings)
    except ValueError as exc:
        raise ConfigError("upstream", str(exc)) from exc
    edge = Edge.from_settings(settings, route_families(settings, upstreams))  # raises ConfigError naming the setting
    _check_aliases(settings, edge, upstreams)
    flags_api_key = settings.flags_personal_api_key
    if settings.flags_personal_api_key_file is not None:
        flags_api_key = _secret("flags_personal_api_key_file", settings.flags_personal_api_key_file)
    gdpr_audit_key = None
    if settings.gdpr_audit_key_file is not None:
        _secret("gdpr_audit_key_file", settings.gdpr_audit_key_file)  # readable, text, not empty
        gdpr_audit_key = settings.gdpr_audit_key_file.read_bytes().strip()
    try:
        privacy = PrivacyPolicy.from_settings(settings)
    except (ValueError, re.error) as exc:
        raise ConfigError("privacy", str(exc)) from exc
    if privacy is not None and settings.upstream_passthrough:
        raise ConfigError("upstream_passthrough", "privacy rules (--ip-mode, --mask-*, --property-denylist, --dnt, "
                          "--inject-geoip-disable) need parsed events; pass-through forwards requests unparsed",
                          value=True)
    return Components(upstreams, keyring, edge, privacy, flags_api_key, gdpr_audit_key)


def _check_aliases(settings: ServeSettings, edge: Edge, upstreams: Upstreams) -> None:
    """Every --path-alias serves something: its target is (under) a served route, its own path is no route's
    (the route would shadow it). An alias that serves nothing would answer an SDK 404, losing its events."""
    families = [(spec.name, spec.paths) for spec in capture_routes(settings)]
    if upstreams.enabled:
        families += [(route.family, route.paths) for route in PROXY_ROUTES]
    paths = [prefix + path for name, paths in families if edge.serves(name)
             for prefix in ("", *settings.prefix) for path in paths]
    for alias in edge.aliases:
        if not any(next(aliased_paths(path, (alias,)), None) for path in paths):
            raise ConfigError("path_alias", f"{alias.target} is no served route (nor under one)",
                              value=f"{alias.alias}={alias.target}")
        if alias.alias in paths:
            raise ConfigError("path_alias", f"{alias.alias} is a served route already",
                              value=f"{alias.alias}={alias.target}")


def check_components(settings: ServeSettings) -> ServeSettings:
    """Validate the values, then build the components (`config check`)."""
    build_components(settings.validate())
    return settings


def _secret(name: str, path: Path) -> str:
    try:
        return read_secret(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(name, str(exc), value=path) from exc
