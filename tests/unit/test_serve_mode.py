"""The start-up line's mode: where captured events go, for every sink configuration."""

from __future__ import annotations

import pytest

from gateway.http.announce import describe_mode, is_embedded
from gateway.settings import ServeSettings
from gateway.upstream.hosts import Upstreams

UP = "https://posthog.example.com"


@pytest.mark.parametrize(
    ("overrides", "mode", "embedded"),
    [
        ({}, "embedded spool", True),
        ({"kafka_bootstrap_servers": "k1:9092,k2:9092"}, "Kafka k1:9092,k2:9092", False),
        ({"upstream": UP}, f"upstream forward to {UP}", False),
        ({"upstream": UP, "upstream_passthrough": True}, f"upstream passthrough to {UP}", False),
        ({"upstream": UP, "upstream_events_mode": "mirror"}, f"upstream mirror to {UP} and embedded spool", False),
        ({"upstream": UP, "upstream_events_mode": "off"}, f"embedded spool, proxying to {UP}", True),
    ],
)
def test_mode_names_where_events_go(overrides: dict[str, object], mode: str, embedded: bool) -> None:
    settings = ServeSettings(**overrides).validate()
    upstreams = Upstreams.from_settings(settings)
    assert describe_mode(settings, upstreams) == mode
    assert is_embedded(settings, upstreams) is embedded
