"""Two gateways in a row, as an edge in front of a central capture gateway: the `posthog` SDK → edge
gateway (`--upstream`, forward mode) → upstream gateway (capture mode) → its spool. Every event arrives
exactly once, and the upstream records the client's IP, not the edge's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import requests.adapters
from posthog import Posthog

from tests.support.processes import GatewayProcess, spool_dump

CLIENT_IP = "198.51.100.23"


@pytest.fixture
def behind_load_balancer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's requests reach the edge through one proxy hop that names the client in X-Forwarded-For."""
    original = requests.adapters.HTTPAdapter.send

    def send(self: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        request.headers["X-Forwarded-For"] = CLIENT_IP
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)


@pytest.mark.usefixtures("behind_load_balancer")
def test_sdk_through_edge_and_upstream_gateway_stores_each_event_once_with_the_client_ip(tmp_path: Path) -> None:
    token = f"phc_chain_{uuid.uuid4().hex[:8]}"
    upstream_dir, edge_dir = tmp_path / "upstream", tmp_path / "edge"
    errors: list[Any] = []
    with GatewayProcess(upstream_dir, "--trusted-proxy-hops", "1", name="upstream") as upstream, \
            GatewayProcess(edge_dir, "--upstream", upstream.url, "--trusted-proxy-hops", "1", name="edge") as edge:
        client = Posthog(token, host=edge.url, flush_at=50, flush_interval=0.1,
                         max_retries=0, on_error=lambda error, batch: errors.append((error, len(batch))))
        sent = [client.capture(f"chain_{i % 4}", distinct_id=f"user-{i % 29}", properties={"i": i})
                for i in range(600)]
        sent += [client.set(distinct_id=f"user-{i}", properties={"plan": "pro"}) for i in range(30)]
        sent += [client.alias(previous_id=f"anon-{i}", distinct_id=f"user-{i}") for i in range(10)]
        client.shutdown()
    assert errors == [] and None not in sent

    records = [r for r in spool_dump(upstream_dir) if r["value"]["token"] == token]
    stored = [r["value"]["uuid"] for r in records]
    assert len(stored) == len(set(stored)), "an event arrived twice"
    assert set(stored) == set(sent)
    assert {r["value"]["ip"] for r in records} == {CLIENT_IP}
    assert not [r for r in spool_dump(edge_dir) if r["value"]["token"] == token], "the edge kept events"
