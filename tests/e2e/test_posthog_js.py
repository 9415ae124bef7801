"""posthog-js (the published browser bundle) in headless Debian Chromium against a real `gateway serve`.

What it proves, with the page on another origin than the gateway (so CORS applies as on a real site):
- events from capture, identify, group and alias, plus the automatic $pageview, reach the spool exactly
  once with the SDK's uuids and distinct_ids. Duplicates would mean the browser could not read the answer
  (missing or wrong CORS headers) and posthog-js retried the batch;
- every event POST is answered 200 with `Access-Control-Allow-Origin` mirroring the page origin;
- while /array/<token>/config 404s, posthog-js turns compression off: event bodies go as `application/json`
  behind a CORS preflight (the first batch may still go as gzip `text/plain`); both are accepted;
- leaving the page sends `$pageleave` with sendBeacon (base64 form, `compression=base64`), which Playwright
  cannot observe: it is checked in the spool.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.processes import NODE_DIR, GatewayProcess, ensure_node_modules, require_tool, spool_dump

SCRIPT = NODE_DIR / "run-posthog-js.mjs"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def node() -> str:
    ensure_node_modules(["posthog-js", "playwright-core"])
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} missing: apt-get install -y chromium (see tests/e2e/README.md)")
    return require_tool("node")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(tmp_path_factory.mktemp("posthog-js") / "data") as running:
        yield running


def records_for(gateway: GatewayProcess, token: str) -> list[dict[str, Any]]:
    return [r for r in spool_dump(gateway.data_dir) if r["value"]["token"] == token]


def test_browser_sdk_events_arrive_once_through_cors(node: str, gateway: GatewayProcess) -> None:
    token = f"phc_js_{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [node, str(SCRIPT), gateway.url, token], cwd=NODE_DIR, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    report = orjson.loads(result.stdout)

    sent = {event["uuid"]: event for event in report["sent"]}
    assert Counter(e["event"] for e in sent.values()) == {
        "$pageview": 1, "js_event": 5, "$identify": 1, "$groupidentify": 1, "$create_alias": 1,
        "js_after_identify": 1,
    }
    posts = [r for r in report["requests"] if r["method"] == "POST" and "/e/" in r["url"]]
    assert posts, report["requests"]
    for post in posts:
        assert post.get("status") == 200, post
        assert post["allowOrigin"] == report["origin"]
        assert post["contentType"] in ("text/plain", "application/json")

    # The beacon is sent while the page goes away; give it a moment to be written.
    deadline = time.monotonic() + 10
    while True:
        records = records_for(gateway, token)
        names = Counter(r["value"]["event"] for r in records)
        if (sent.keys() <= {r["value"]["uuid"] for r in records} and names["$pageleave"]) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(0.2)

    stored = Counter(r["value"]["uuid"] for r in records)
    assert [u for u, n in stored.items() if n > 1] == [], "duplicates: the browser could not read an answer"
    assert sent.keys() <= stored.keys()
    assert names["$pageleave"] == 1, "the sendBeacon $pageleave did not arrive"
    anonymous = next(e["distinct_id"] for e in sent.values() if e["event"] == "$pageview")
    for record in records:
        value, data = record["value"], record["data"]
        assert record["topic"] == "events_plugin_ingestion"
        assert data["properties"]["$lib"] == "web"
        if value["uuid"] in sent:
            assert value["distinct_id"] == sent[value["uuid"]]["distinct_id"]
            assert record["key"] == f"{token}:{value['distinct_id']}"
    identify = next(r["data"] for r in records if r["value"]["event"] == "$identify")
    assert identify["properties"]["$anon_distinct_id"] == anonymous
    assert identify["$set"] == {"email": "js@example.com"}  # posthog-js puts $set at the event root
