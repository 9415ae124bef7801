"""The real `posthog-node` npm SDK (tests/e2e/node/send-posthog-node.mjs) against a real `gateway serve`:
captures (properties, groups, caller uuids, past timestamps), identify ($set/$set_once), alias and
groupIdentify, gzip (the SDK default, `Content-Encoding: gzip`) and plain JSON. The script reports what it
called and every request it made (decoded) with its answer; the test checks that the SDK sent exactly what
was called, that every request got 200, and that every wire event is in the spool once, unchanged.
"""

from __future__ import annotations

import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.support.processes import NODE_DIR, GatewayProcess, ensure_node_modules, require_tool, spool_dump

MAIN_TOPIC = "events_plugin_ingestion"
SCRIPT = NODE_DIR / "send-posthog-node.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    ensure_node_modules(["posthog-node"])
    return require_tool("node")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("node-sdk") / "data") as running:
        yield running


def run_sdk(node: str, gateway: GatewayProcess, token: str, mode: str) -> dict[str, Any]:
    result = subprocess.run(
        [node, str(SCRIPT), gateway.url, token, "nd", mode],
        cwd=NODE_DIR, capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return orjson.loads(result.stdout)


def expected_names(calls: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(event, distinct_id) of what each SDK call must put on the wire."""
    kinds = {"identify": "$identify", "alias": "$create_alias", "groupIdentify": "$groupidentify"}
    return Counter((call.get("event") or kinds[call["kind"]], call["distinctId"]) for call in calls)


@pytest.mark.parametrize("mode", ["gzip", "plain"])
def test_every_sdk_event_lands_in_the_spool_exactly_once(
    node: str, gateway: GatewayProcess, mode: str
) -> None:
    token = f"phc_node_{mode}_{uuid.uuid4().hex[:8]}"
    report = run_sdk(node, gateway, token, mode)
    assert report["errors"] == []

    requests = report["requests"]
    assert len(requests) >= 8, "the SDK did not batch as configured (flushAt 25, maxBatchSize 50)"
    for sent in requests:
        assert sent["method"] == "POST" and sent["url"] == gateway.url + "/batch/"
        assert sent["status"] == 200 and orjson.loads(sent["response"]) == {"status": "Ok"}
        assert sent["encoding"] == ("gzip" if mode == "gzip" else None)
        assert (sent["magic"] == "1f8b") is (mode == "gzip")
        assert sent["payload"]["api_key"] == token

    on_wire = {event["uuid"]: event for sent in requests for event in sent["payload"]["batch"]}
    assert len(on_wire) == sum(len(sent["payload"]["batch"]) for sent in requests), "SDK repeated a uuid"
    calls = report["calls"]
    assert Counter((e["event"], e["distinct_id"]) for e in on_wire.values()) == expected_names(calls)
    assert {c["uuid"] for c in calls if "uuid" in c} <= on_wire.keys(), "caller-chosen uuids not kept"

    records = [r for r in spool_dump(gateway.data_dir) if r["value"]["token"] == token]
    stored = Counter(r["value"]["uuid"] for r in records)
    assert [u for u, n in stored.items() if n > 1] == [], "duplicates in the spool"
    assert stored.keys() == on_wire.keys()
    for record in records:
        sent = on_wire[record["value"]["uuid"]]
        value, data = record["value"], record["data"]
        assert record["topic"] == MAIN_TOPIC
        assert record["key"] == f"{token}:{sent['distinct_id']}"
        assert value["distinct_id"] == sent["distinct_id"] and value["event"] == sent["event"]
        assert record["headers"]["uuid"] == sent["uuid"] and record["headers"]["token"] == token
        assert data["properties"] == sent["properties"] and data["event"] == sent["event"]
        assert data["properties"]["$lib"] == "posthog-node"
        # Capture corrects client clock skew (timestamp - sent_at + now); locally that is well under 5 s.
        skew = datetime.fromisoformat(value["timestamp"]) - datetime.fromisoformat(sent["timestamp"])
        assert abs(skew) < timedelta(seconds=5)
    by_event = Counter(r["value"]["event"] for r in records)
    assert (by_event["$identify"], by_event["$create_alias"], by_event["$groupidentify"]) == (40, 20, 20)
    identify = next(r["data"] for r in records if r["value"]["event"] == "$identify")
    assert set(identify["properties"]["$set"]) == {"email", "age"}
    assert "first_seen" in identify["properties"]["$set_once"]
