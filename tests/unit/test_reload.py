"""Edge.reload: policy settings applied in place; unchanged rate windows keep their counts."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.edge.setup import Edge
from gateway.reload import Reloader
from gateway.settings import ConfigError, ServeSettings

ROUTES = ["events", "batch", "replay"]


def edge_for(**overrides: object) -> tuple[ServeSettings, Edge]:
    settings = ServeSettings(**overrides).validate()
    return settings, Edge.from_settings(settings, ROUTES)


def built(settings: ServeSettings) -> Edge:
    """What a SIGHUP's loader returns: the edge built from the new settings."""
    return Edge.from_settings(settings.validate(), ROUTES)


def test_reload_replaces_changed_windows_keeps_unchanged_ones_and_token_lists() -> None:
    settings, edge = edge_for(rate_limit_ip=("events=5/second", "batch=7/second"))
    events, batch = edge.rate_limits.by_ip["events"], edge.rate_limits.by_ip["batch"]
    new = dataclasses.replace(
        settings, rate_limit_ip=("events=9/second", "batch=7/second"), allow_tokens=("phc_a",),
        drop_events=("phc_b",), max_in_flight=3, port=9999,
    )
    assert edge.reload(built(new)) == []
    assert edge.rate_limits.by_ip["batch"] is batch and edge.rate_limits.by_ip["events"] is not events
    assert edge.rate_limits.by_ip["events"].amount == 9
    assert edge.tokens.allow == frozenset({"phc_a"}) and edge.tokens.drop_tokens == {"phc_b"}
    assert edge.policy.max_in_flight == 3
    assert edge.settings.port == settings.port  # not reloadable: stays as it runs


def test_shared_rate_limits_need_a_restart() -> None:
    settings, edge = edge_for(rate_limit_storage="redis://127.0.0.1:1/0")
    window = edge.rate_limits.by_ip["events"]
    new = dataclasses.replace(settings, rate_limit_ip=("events=1/second",), cors_origins=("https://a.example",))
    assert edge.reload(built(new)) == ["rate_limit_ip"]
    assert edge.rate_limits.by_ip["events"] is window and edge.policy.cors.allowed is not None


def test_invalid_reload_applies_nothing() -> None:
    settings, edge = edge_for()
    cors = edge.policy.cors
    reloader = Reloader(settings, lambda: built(dataclasses.replace(
        settings, cors_origins=("no-scheme.example",), max_in_flight=1)), edge)
    assert reloader.reload() is False
    assert edge.policy.cors is cors and edge.policy.max_in_flight == settings.max_in_flight


def test_reloader_applies_only_reloadable_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    levels: list[str] = []
    monkeypatch.setattr("gateway.reload.set_level", levels.append)
    settings, edge = edge_for()
    new = dataclasses.replace(settings, workers=4, log_level="warning")
    reloader = Reloader(settings, lambda: built(new), edge)
    assert reloader.reload() and reloader.settings.workers == 1 and reloader.settings.log_level == "warning"
    assert levels == ["warning"]
    failing = Reloader(settings, lambda: (_ for _ in ()).throw(ConfigError("port", "bad")), edge)
    assert failing.reload() is False
