"""posthog-js in headless Debian Chromium, loaded from and sending through a gateway in reverse-proxy mode.

    page (another origin) ──/static, /array──▶ edge gateway ──▶ assets origin (posthog-js dist + remote config)
                          ──/e, /i/v0/e, /s──▶ edge gateway ──▶ upstream gateway (capture mode) ──▶ its spool
                          ──/flags─────────▶ edge gateway ──▶ upstream gateway (no flags there: 404)

The edge runs `--upstream <upstream gateway> --assets-upstream <assets origin> --trusted-proxy-hops 0`; the
upstream trusts one hop (`--trusted-proxy-hops 1`), so it takes the client IP from the edge's X-Forwarded-For.
The browser sends a spoofed `X-Forwarded-For` with every request, which the edge must neither believe nor
pass on.

What it proves:
- the SDK bundle (`<edge>/static/array.js` with the SRI `integrity` of posthog-js' own integrity.json), the
  lazily loaded recorder (`/static/<version>/lazy-recorder.js`) and the remote config (`/array/<token>/config.js`;
  the JSON `/config` is fetched by the test) come through the edge byte for byte as on disk (the assets
  origin answers gzip, as a CDN does), never redirected, with CORS headers the browser accepts;
- the remote config turns compression and session recording on: events go as gzip `text/plain` (no
  preflight) to `analytics.endpoint` (`/i/v0/e/`), snapshots to `sessionRecording.endpoint` (`/s/`), every
  one answered 200 with `Access-Control-Allow-Origin` mirroring the page origin;
- every event the SDK sent (pageview, custom events, identify, each `$snapshot`) and the `$pageleave` beacon
  land in the UPSTREAM gateway's spool exactly once (a duplicate would mean the browser could not read an
  answer and retried), with at least one `$snapshot_items` replay record; nothing stays in the edge's spool;
- every stored record has `ip` = 127.0.0.1, the browser's address as the edge resolved it, not the spoofed
  one; the edge sent the assets origin exactly one `X-Forwarded-For: 127.0.0.1` and no cookie.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.support.processes import NODE_DIR, GatewayProcess, ensure_node_modules, require_tool, spool_dump

SCRIPT = NODE_DIR / "run-posthog-js-proxy.mjs"
CHROMIUM = Path("/usr/bin/chromium")
DIST = NODE_DIR / "node_modules" / "posthog-js" / "dist"
BROWSER_IP = "127.0.0.1"
SPOOFED_IP = "203.0.113.9"  # what the page claims in X-Forwarded-For (run-posthog-js-proxy.mjs)


def remote_config(token: str) -> dict[str, Any]:
    """What PostHog's `/array/<token>/config` answers for a project with replay on (protocol reference §10)."""
    return {
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": False,
        "captureDeadClicks": False,
        "capturePerformance": False,
        "autocapture_opt_out": True,
        "autocaptureExceptions": False,
        "analytics": {"endpoint": "/i/v0/e/"},
        "elementsChainAsString": True,
        "errorTracking": {"autocaptureExceptions": False, "suppressionRules": []},
        "sessionRecording": {
            "endpoint": "/s/",
            "consoleLogRecordingEnabled": True,
            "recorderVersion": "v2",
            "sampleRate": None,
            "minimumDurationMilliseconds": None,
            "linkedFlag": None,
            "networkPayloadCapture": None,
            "masking": None,
            "urlTriggers": [],
            "urlBlocklist": [],
            "eventTriggers": [],
            "triggerMatchType": None,
            "scriptConfig": None,
        },
        "heatmaps": False,
        "surveys": False,
        "defaultIdentifiedOnly": True,
        "siteApps": [],
    }


class AssetsOrigin:
    """A stand-in for PostHog's assets host: posthog-js' dist at /static/*, recorded remote config at /array/*.
    Like a CDN it answers gzip to clients that accept it. Every request's path and headers are kept."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Message]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                origin.requests.append((self.path, self.headers))
                status, content_type, body = origin.answer(self.path.split("?")[0])
                headers = {"Content-Type": content_type, "Cache-Control": "public, max-age=300", "Vary": "Origin"}
                if status == 200 and "gzip" in self.headers.get("Accept-Encoding", ""):
                    body = gzip.compress(body, mtime=0)
                    headers["Content-Encoding"] = "gzip"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        if match := re.fullmatch(r"/static/(?:[0-9][0-9.]*/)?([A-Za-z0-9_.-]+\.js)", path):
            file = DIST / match[1]
            if file.is_file():
                return 200, "application/javascript", file.read_bytes()
        elif match := re.fullmatch(r"/array/([A-Za-z0-9_-]+)/config(\.js)?", path):
            config = remote_config(match[1])
            if not match[2]:
                return 200, "application/json", orjson.dumps(config)
            script = (
                "(function() {window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {};"
                f"window._POSTHOG_REMOTE_CONFIG[{orjson.dumps(match[1]).decode()}] = "
                f"{{config: {orjson.dumps(config).decode()}, siteApps: []}}}})();"
            )
            return 200, "application/javascript", script.encode()
        return 404, "text/plain", b"not found"

    def __enter__(self) -> AssetsOrigin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def node() -> str:
    ensure_node_modules(["posthog-js", "playwright-core"])
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} missing: apt-get install -y chromium (see tests/e2e/README.md)")
    return require_tool("node")


def sri(file: Path) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(file.read_bytes()).digest()).decode()


def test_browser_sdk_through_reverse_proxy_edge_reaches_upstream_once(node: str, tmp_path: Path) -> None:
    token = f"phc_jsproxy_{uuid.uuid4().hex[:8]}"
    integrity = sri(DIST / "array.js")
    assert integrity == orjson.loads((DIST / "integrity.json").read_bytes())["files"]["array.js"]
    upstream_dir, edge_dir = tmp_path / "upstream", tmp_path / "edge"
    with AssetsOrigin() as assets, \
            GatewayProcess(upstream_dir, "--trusted-proxy-hops", "1", name="upstream") as upstream, \
            GatewayProcess(edge_dir, "--upstream", upstream.url, "--assets-upstream", assets.url,
                           "--trusted-proxy-hops", "0", "--rate-limit-ip", "off", name="edge") as edge:
        result = subprocess.run(
            [node, str(SCRIPT), edge.url, token, integrity], cwd=NODE_DIR, capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace") + edge.log()
        report = orjson.loads(result.stdout)
        sent = {event["uuid"]: event for event in report["sent"]}

        # The beacon is sent while the page goes away; give it a moment to be forwarded and written.
        deadline = time.monotonic() + 10
        while True:
            records = [r for r in spool_dump(upstream_dir) if r["value"]["token"] == token]
            names = Counter(r["value"]["event"] for r in records)
            if (sent.keys() <= {r["value"]["uuid"] for r in records} and names["$pageleave"]) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
        edge_records = [r for r in spool_dump(edge_dir) if r["value"]["token"] == token]
        # posthog-js took its remote config from config.js; the JSON form comes through the edge as well.
        config = requests.get(f"{edge.url}/array/{token}/config", headers={"Origin": report["origin"]}, timeout=5)

    context = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    sent_names = Counter(e["event"] for e in sent.values())
    assert {"$pageview": 1, "js_event": 3, "$identify": 1, "js_after_identify": 1}.items() <= sent_names.items()
    assert sent_names["$snapshot"] >= 1, context

    # (2) nothing redirected or failed; every capture POST (events and replay) answered 200 with CORS.
    seen = report["requests"]
    assert [r for r in seen if r.get("failure") or r["redirectedFrom"] or r["location"]] == [], context
    paths = Counter((r["method"], r["url"].removeprefix(edge.url).split("?")[0]) for r in seen)
    flags = [r for r in seen if r["url"].startswith(f"{edge.url}/flags/")]
    captures = [r for r in seen if r["method"] == "POST" and r not in flags]
    assert {path for _, path in paths if path.startswith("/flags/")} <= {"/flags/"}, paths
    # The first batch may leave before the remote config is in (legacy /e/); then /i/v0/e/ as configured.
    assert {path for method, path in paths if method == "POST"} - {"/flags/"} <= {"/e/", "/i/v0/e/", "/s/"}, paths
    assert paths["POST", "/i/v0/e/"] and paths["POST", "/s/"], paths
    for request in captures:
        assert request["status"] == 200 and request["allowOrigin"] == report["origin"], request
        assert request["contentType"] == "text/plain", request  # compression on: gzip bodies, no preflight
    # /flags went through to the upstream, a capture-only gateway without flags: its 404, with the edge's CORS.
    assert all(r["status"] == 404 and r["allowOrigin"] == report["origin"] for r in flags), flags
    assert [r for r in seen if r not in flags and r["status"] != 200] == [], context
    assert [e for e in report["consoleErrors"] if "posthog" in e.lower()] == [], report["consoleErrors"]

    # (3) the bytes the browser got from /static are the files on disk: the assets origin answered gzip and
    # the edge passed it on; array.js also passed the browser's SRI check (or posthog would not have loaded).
    statics = {r["url"].split("?")[0].rsplit("/", 1)[1]: r for r in seen if "/static/" in r["url"]}
    assert {"array.js", "lazy-recorder.js"} <= statics.keys(), statics.keys()
    for name, request in statics.items():
        assert request["sha256"] == hashlib.sha256((DIST / name).read_bytes()).hexdigest(), name
        assert request["allowOrigin"] == report["origin"], request
    assert paths["GET", f"/array/{token}/config.js"] == 1, paths
    assert config.status_code == 200 and config.json() == remote_config(token), config.text
    assert config.headers["Access-Control-Allow-Origin"] == report["origin"]
    # The browser sent a spoofed X-Forwarded-For; the edge (trusting no hop) named the browser's address
    # instead, in exactly one header, and sent no cookie.
    assert {r["forwardedFor"] for r in seen} == {SPOOFED_IP}
    assert assets.requests
    for path, headers in assets.requests:
        assert headers.get_all("X-Forwarded-For") == [BROWSER_IP] and "Cookie" not in headers, (path, dict(headers))

    # (1) every event, the beacon and the replay arrive upstream exactly once, with the browser's IP.
    stored = Counter(r["value"]["uuid"] for r in records)
    assert [u for u, n in stored.items() if n > 1] == [], "duplicates: the browser could not read an answer"
    assert sent.keys() <= stored.keys(), sent.keys() - stored.keys()
    assert names["$pageleave"] == 1, "the sendBeacon $pageleave did not arrive"
    assert names["$snapshot_items"] >= 1, names
    assert edge_records == [], "the edge kept events"
    assert {r["value"]["ip"] for r in records} == {BROWSER_IP}
    for record in records:
        value, data = record["value"], record["data"]
        assert data["properties"]["$lib"] == "web"
        if value["event"] == "$snapshot_items":
            assert record["topic"] == "session_recording_snapshot_item_events"
            assert data["properties"]["$snapshot_items"] and record["key"] == data["properties"]["$session_id"]
        else:
            assert record["topic"] == "events_plugin_ingestion"
            assert record["key"] == f"{token}:{value['distinct_id']}"
        if value["uuid"] in sent:
            assert value["distinct_id"] == sent[value["uuid"]]["distinct_id"]
    identify = next(r for r in records if r["value"]["event"] == "$identify")
    anonymous = next(e["distinct_id"] for e in sent.values() if e["event"] == "$pageview")
    assert identify["value"]["distinct_id"] == "js-proxy-user"
    assert identify["data"]["properties"]["$anon_distinct_id"] == anonymous
    assert identify["data"]["$set"] == {"email": "proxy@example.com"}
