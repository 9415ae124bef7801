"""plan_reload, the edge's SIGHUP diff as a pure function: each changed setting is applied live or
needs a restart, with in-memory and with Redis-shared rate limits (TLS on/off applies live with both)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.edge.certs import write_dev_cert
from gateway.edge.setup import RELOADABLE, Edge, plan_reload
from gateway.settings import ServeSettings

MEMORY = "memory://"
REDIS = "redis://127.0.0.1:1/0"
TLS_ON = {"tls_cert": Path("/certs/a.pem"), "tls_key": Path("/certs/a.key")}
TLS_OTHER = {"tls_cert": Path("/certs/b.pem"), "tls_key": Path("/certs/b.key")}
TLS_OFF = {"tls_cert": None, "tls_key": None}
NONE: frozenset[str] = frozenset()

# (case, running settings, new settings, storage → the changed settings that need a restart; the
# others apply live)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, frozenset[str]]]] = [
    ("rate_limit_ip", {}, {"rate_limit_ip": ("events=9/second",)},
     {MEMORY: NONE, REDIS: frozenset({"rate_limit_ip"})}),
    ("rate_limit_token", {}, {"rate_limit_token": ("events=9/second",)},
     {MEMORY: NONE, REDIS: frozenset({"rate_limit_token"})}),
    ("allow_tokens", {}, {"allow_tokens": ("phc_a",)}, {MEMORY: NONE, REDIS: NONE}),
    ("drop_events", {}, {"drop_events": ("phc_b",)}, {MEMORY: NONE, REDIS: NONE}),
    ("cors_origins", {}, {"cors_origins": ("https://a.example",)}, {MEMORY: NONE, REDIS: NONE}),
    ("admin_allow_cidrs", {}, {"admin_allow_cidrs": ("10.0.0.0/8",)}, {MEMORY: NONE, REDIS: NONE}),
    ("admin_token_file", {}, {"admin_token_file": Path("/secrets/token")}, {MEMORY: NONE, REDIS: NONE}),
    ("max_in_flight", {}, {"max_in_flight": 7}, {MEMORY: NONE, REDIS: NONE}),
    ("new certificate", TLS_ON, {"tls_cert": TLS_OTHER["tls_cert"]}, {MEMORY: NONE, REDIS: NONE}),
    ("new key", TLS_ON, {"tls_key": TLS_OTHER["tls_key"]}, {MEMORY: NONE, REDIS: NONE}),
    ("TLS switched on", TLS_OFF, TLS_ON, {MEMORY: NONE, REDIS: NONE}),
    ("TLS switched off", TLS_ON, TLS_OFF, {MEMORY: NONE, REDIS: NONE}),
    ("TLS on with a new certificate file only", {"tls_key": TLS_ON["tls_key"]}, {"tls_cert": TLS_ON["tls_cert"]},
     {MEMORY: NONE, REDIS: NONE}),
    ("TLS on and a new rate", TLS_OFF, TLS_ON | {"rate_limit_ip": ("events=9/second",)},
     {MEMORY: NONE, REDIS: frozenset({"rate_limit_ip"})}),
]


@pytest.mark.parametrize("storage", [MEMORY, REDIS])
@pytest.mark.parametrize(("running_values", "new_values", "restart"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_changed_setting_is_applied_live_or_needs_a_restart(
    storage: str, running_values: dict[str, Any], new_values: dict[str, Any], restart: dict[str, frozenset[str]]
) -> None:
    running = ServeSettings(rate_limit_storage=storage, **running_values)
    new = dataclasses.replace(running, **new_values)
    plan = plan_reload(running, new)
    assert set(plan.restart) == restart[storage]
    for name in new_values:
        kept = getattr(running, name) if name in restart[storage] else getattr(new, name)
        assert getattr(plan.settings, name) == kept, name


def test_settings_outside_the_edge_are_left_as_they_run() -> None:
    running = ServeSettings()
    plan = plan_reload(running, dataclasses.replace(running, port=9999, workers=4, cors_origins=("https://a.b",)))
    assert plan.restart == () and plan.settings.port == running.port and plan.settings.workers == running.workers
    assert plan.settings.cors_origins == ("https://a.b",)


def test_every_reloadable_setting_is_in_the_table() -> None:
    assert {name for case in CASES for name in case[2]} == set(RELOADABLE)


@pytest.mark.parametrize("storage", [MEMORY, REDIS])
def test_tls_switched_on_and_off_by_reload_takes_the_fresh_context(storage: str, tmp_path: Path) -> None:
    cert, key = write_dev_cert(tmp_path)
    settings = ServeSettings(rate_limit_storage=storage).validate()
    edge = Edge.from_settings(settings, ["events"])
    tls = dataclasses.replace(settings, tls_cert=cert, tls_key=key, cors_origins=("https://a.example",))
    fresh = Edge.from_settings(tls, ["events"])
    assert edge.reload(fresh) == []
    assert edge.ssl_context is fresh.ssl_context and edge.settings.tls_cert == cert
    assert "Strict-Transport-Security" in dict(edge.policy.headers)  # answers say TLS now
    assert edge.policy.cors.allowed is not None  # the rest of the reload applies too
    assert edge.reload(Edge.from_settings(settings, ["events"])) == []
    assert edge.ssl_context is None and edge.settings.tls_cert is None
    assert "Strict-Transport-Security" not in dict(edge.policy.headers)
