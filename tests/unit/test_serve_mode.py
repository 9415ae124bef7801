"""The start-up line's mode: where captured events go, for every sink configuration."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.core.record import Record
from gateway.http.announce import announce, describe_mode, is_embedded
from gateway.settings import ServeSettings
from gateway.spool import Spool
from gateway.upstream.hosts import Upstreams

UP = "https://posthog.example.com"


def test_the_start_line_hides_upstream_credentials() -> None:
    settings = ServeSettings(upstream="https://gw:s3cret@posthog.internal/ph").validate()
    assert describe_mode(settings, Upstreams.from_settings(settings)) == (
        "upstream forward to https://gw:<redacted>@posthog.internal/ph")


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


@pytest.mark.parametrize(("overrides", "warned"), [
    ({"upstream": UP, "upstream_events_mode": "off"}, True),   # events no longer go upstream
    ({}, True),                                                # no upstream at all
    ({"upstream": UP}, False),                                 # forward: the replayer drains it
    ({"upstream": UP, "upstream_events_mode": "mirror"}, False),
])
def test_events_left_in_the_upstream_spool_are_named_when_nothing_forwards_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, object], warned: bool
) -> None:
    """Acknowledged events spooled for the upstream (it was down) and a restart that no longer forwards
    events: nothing will ever send them, so the start says where they are instead of staying silent."""
    record = Record("upstream-event", None, (("token", b"phc_x"),), b"{}")
    warnings = warnings_at_start(tmp_path / "upstream-spool" / "worker-1", record, overrides, caplog)
    stranded = [message for message in warnings if "upstream-spool" in message]
    assert bool(stranded) is warned, caplog.text
    if warned:
        assert "worker-1" in stranded[0] and "not forward" in stranded[0]


@pytest.mark.parametrize(("overrides", "warned"), [
    ({"upstream": UP}, True),                                       # forward: the local spool is not read
    ({"upstream": UP, "upstream_passthrough": True}, True),
    ({"upstream": UP, "upstream_events_mode": "mirror"}, False),    # mirror keeps writing (and draining) it
    ({"kafka_bootstrap_servers": "k1:9092"}, False),                # Kafka mode replays it
])
def test_events_left_in_a_local_spool_are_named_in_forward_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, overrides: dict[str, object], warned: bool
) -> None:
    """A Kafka-mode run left a backlog in its failover spool (the broker was down), and the restart forwards
    events to an upstream instead: nothing replays it, so the start says where it is."""
    record = Record("events_plugin_ingestion", b"phc_x:d", (("token", b"phc_x"),), b"{}")
    warnings = warnings_at_start(tmp_path / "spool" / "worker-0", record, overrides, caplog)
    left = [message for message in warnings if "spooled locally" in message]
    assert bool(left) is warned, caplog.text
    if warned:
        assert "worker-0" in left[0] and "--kafka-bootstrap-servers" in left[0]


def warnings_at_start(
    spool_dir: Path, record: Record, overrides: dict[str, object], caplog: pytest.LogCaptureFixture
) -> list[str]:
    """What `announce` warns of, for a data dir (the spool's grandparent) whose spool holds `record`."""

    async def spool_one() -> None:
        spool = Spool(spool_dir)
        await spool.open()
        await spool.append([record])
        await spool.close()

    asyncio.run(spool_one())
    settings = ServeSettings(data_dir=spool_dir.parent.parent, **overrides).validate()
    with caplog.at_level(logging.WARNING):
        announce(settings, Upstreams.from_settings(settings))
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
