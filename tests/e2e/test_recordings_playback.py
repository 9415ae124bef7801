"""Session replay end to end: posthog-js records a page in headless Chromium → `gateway serve` (spool) →
`gateway recordings sink` (blocks in a directory, metadata in chdb) → `gateway recordings export` →
rrweb-player in Chromium.

What it proves:
- the exported array plays: rrweb-player holds every exported event, its duration is the span of the
  recorded timestamps, and the replayed page at the end is the recorded one (heading, the status text the
  page changed after the click, the form), which the screenshot shows in the page's own colours;
- posthog-js' compressed events (`cv: 2024-10`: a gzipped full snapshot and mutations) are inflated by the
  export, as PostHog's player does, or rrweb would show a blank frame;
- the text typed into the two masked inputs (a text input, masked by posthog-js' default `maskAllInputs`,
  and a password) is nowhere: not in the spool, not in any block (zstd and posthog-js' gzip both undone),
  not in the export; the player shows asterisks.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import cramjam
import orjson
import pytest

from gateway.recordings.blocks import decode_block
from gateway.recordings.export import playable
from tests.support.processes import (
    NODE_DIR,
    REPO_ROOT,
    GatewayProcess,
    ensure_node_modules,
    gateway_env,
    require_tool,
    run_gateway,
    spool_dump,
)
from tests.support.waiting import wait_for

pytest.importorskip("chdb")
RECORD = NODE_DIR / "record-posthog-js-session.mjs"
PLAY = NODE_DIR / "play-rrweb.mjs"
CHROMIUM = Path("/usr/bin/chromium")
PAGE_BACKGROUND, BUTTON_ORANGE, HEADING_BLUE = "244,240,232", "249,115,22", "29,78,216"  # the recorded page's CSS


@pytest.fixture(scope="module")
def node() -> str:
    ensure_node_modules(["posthog-js", "playwright-core", "rrweb-player"])
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} missing: apt-get install -y chromium (see tests/e2e/README.md)")
    return require_tool("node")


def run_node(node: str, *args: str) -> dict[str, Any]:
    result = subprocess.run([node, *args], cwd=NODE_DIR, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return orjson.loads(result.stdout)


def inflated(events: list[Any]) -> bytes:
    """The events as JSON with posthog-js' gzipped fields inflated, so their text can be searched."""
    return orjson.dumps([playable(e) if isinstance(e, dict) else e for e in events])


def test_posthog_js_recording_plays_in_rrweb_player_without_masked_text(node: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = f"hunter2-{uuid.uuid4().hex[:8]}"
    with GatewayProcess(data) as gateway:
        recorded = run_node(node, str(RECORD), gateway.url, f"phc_replay_{uuid.uuid4().hex[:8]}", secret)
    assert recorded["consoleErrors"] == [], recorded["consoleErrors"]
    assert {(r["path"], r["status"]) for r in recorded["requests"]} >= {("/s/", 200)}, recorded["requests"]
    session_id = recorded["sessionId"]

    sink_log = tmp_path / "recordings-sink.log"
    with open(sink_log, "wb") as log:
        sink = subprocess.Popen(
            [sys.executable, "-m", "gateway", "recordings", "sink", "--data-dir", str(data),
             "--clickhouse", f"chdb://{data}/chdb", "--block-max-age", "0.2", "--log-format", "text"],
            stdout=log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)
        try:
            snapshots = sum(len(r["data"]["properties"]["$snapshot_items"]) for r in spool_dump(data)
                            if r["topic"] == "session_recording_snapshot_item_events")
            session_dir = data / "recordings" / "sessions"
            stored = lambda: sum(1 for path in session_dir.glob(f"*/{session_id}/*.jsonl.zst")  # noqa: E731
                                 for _ in decode_block(path.read_bytes()))
            wait_for(lambda: session_dir.is_dir() and stored() == snapshots, timeout=30,
                     what=f"{snapshots} snapshot items in blocks")
        finally:
            sink.terminate()
            assert sink.wait(30) == 0, sink_log.read_text()[-3000:]

    out = tmp_path / "session.json"
    exported = run_gateway("recordings", "export", session_id, "--out", str(out), "--data-dir", str(data),
                           "--clickhouse", f"chdb://{data}/chdb")
    assert exported.returncode == 0, exported.stderr
    events = orjson.loads(out.read_bytes())
    assert len(events) == snapshots
    assert not any("cv" in event for event in events), "posthog-js' compressed events must be inflated"
    assert [e["type"] for e in events[:2]] == [4, 2], "meta, then the full snapshot"

    screenshot = tmp_path / "player.png"
    played = run_node(node, str(PLAY), str(out), str(screenshot))
    assert played["consoleErrors"] == [], played["consoleErrors"]
    timestamps = [e["timestamp"] for e in events]
    assert played["eventCount"] == len(events)
    assert played["meta"]["startTime"] == min(timestamps) and played["meta"]["endTime"] == max(timestamps)
    assert played["meta"]["totalTime"] == max(timestamps) - min(timestamps) > 0
    assert played["replayedText"].split() == ["Checkout", "Payment", "sent", "Pay", "now"]
    assert [(i["id"], set(i["value"])) for i in played["replayedInputs"]] == [("name", {"*"}), ("password", {"*"})]
    colours = dict(played["frameColours"]["top"])
    assert screenshot.stat().st_size > 0
    assert colours.get(PAGE_BACKGROUND, 0) > played["frameColours"]["pixels"] / 2, colours
    assert colours.get(BUTTON_ORANGE) and colours.get(HEADING_BLUE), f"the page's button and heading: {colours}"

    # The typed text is nowhere; the searched forms do hold the page's own text, so the search can fail.
    spool = subprocess.run([sys.executable, "-m", "gateway", "spool", "dump", "--data-dir", str(data)],
                           capture_output=True, env=gateway_env(), cwd=REPO_ROOT, timeout=60, check=True).stdout
    spooled = [item for r in spool_dump(data) for item in r["data"]["properties"].get("$snapshot_items", [])]
    blocks = sorted((data / "recordings").rglob("*.jsonl.zst"))
    assert blocks
    searched = {
        "spool dump": spool,
        "spooled snapshots, inflated": inflated(spooled),
        "export": out.read_bytes(),
        **{f"block {p.name}": bytes(cramjam.zstd.decompress(p.read_bytes())) for p in blocks},
        **{f"block {p.name}, inflated": inflated([e for _, e in decode_block(p.read_bytes())]) for p in blocks},
    }
    assert b"Payment sent" in searched["spooled snapshots, inflated"]
    assert b"Payment sent" in searched["export"]
    assert [name for name, content in searched.items() if secret.encode() in content] == []
