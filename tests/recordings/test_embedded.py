"""Embedded mode end to end: `gateway serve` (spool) → `gateway recordings sink` (chdb + a directory) →
export, DLQ, a large session split into blocks, `gateway gdpr export|delete` and retention."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.recordings.replay import now_ms, post_snapshots, rrweb_session
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env, run_gateway
from tests.support.waiting import wait_for

pytest.importorskip("chdb")
DAY_MS = 86_400_000


def sink_process(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    log = open(data_dir.parent / "recordings-sink.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "recordings", "sink", "--data-dir", str(data_dir),
         "--clickhouse", f"chdb://{data_dir}/chdb", "--log-format", "text", *args],
        stdout=log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)


def test_embedded_sink_split_dlq_export_erasure_and_retention(tmp_path: Path) -> None:
    data = tmp_path / "data"
    alice = rrweb_session(now_ms() - 60_000, padding=600)  # 3 events per request: one 1 KB block each
    old = rrweb_session(now_ms() - 40 * DAY_MS)
    with GatewayProcess(data) as gateway:
        post_snapshots(gateway.url, "session-alice", "alice", alice)
        post_snapshots(gateway.url, "session-old", "bob", old)
        post_snapshots(gateway.url, "session-bad", "carol", [{"type": 99, "timestamp": 1}, "not an event"])
    sink = sink_process(data, "--block-max-bytes", "1K", "--block-max-age", "0.2",
                        "--recordings-retention-interval", "0")
    try:
        dlq_dir = data / "recordings-dlq"
        wait_for(lambda: list(dlq_dir.glob("*.jsonl")), timeout=60, what="dead letters of the bad items")
        time.sleep(1)
    finally:
        sink.terminate()
        assert sink.wait(30) == 0, (data.parent / "recordings-sink.log").read_text()[-3000:]

    reasons = [orjson.loads(line)["headers"]
               for path in dlq_dir.glob("*.jsonl") for line in path.read_bytes().splitlines()]
    assert [(h["dlq_reason"], h["dlq_detail"][:7]) for h in reasons] == [
        ("invalid_snapshot_item", "type 99"), ("invalid_snapshot_item", "item is")]

    blocks = sorted((data / "recordings" / "sessions").glob("*/session-alice/*.jsonl.zst"))
    assert len(blocks) == 4, "a session above --block-max-bytes is split into several blocks"
    common = ("--data-dir", str(data), "--clickhouse", f"chdb://{data}/chdb")
    out = tmp_path / "alice.json"
    result = run_gateway("recordings", "export", "session-alice", "--out", str(out), *common)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(out.read_bytes()) == alice

    missing = run_gateway("recordings", "export", "no-such-session", "--out", str(out), *common)
    assert missing.returncode == 1
    assert "no recording of session 'no-such-session'" in missing.stderr

    gdpr = ("--clickhouse", f"chdb://{data}/chdb", "--recordings-storage", str(data / "recordings"),
            "--audit-log", str(tmp_path / "audit.jsonl"))
    assert run_gateway("sink", "--init-schema", "--clickhouse", f"chdb://{data}/chdb").returncode == 0  # events table
    exported = run_gateway("gdpr", "export", "--distinct-id", "alice", "--out", "-", *gdpr)
    assert exported.returncode == 0, exported.stderr
    (line,) = [orjson.loads(x) for x in exported.stdout.splitlines() if b"session_recording" in x.encode()]
    summary = line["session_recording"]
    assert summary["events"] == alice
    assert (summary["session_id"], summary["distinct_id"], summary["first_url"]) == (
        "session-alice", "alice", "https://shop.example/cart")
    assert (summary["click_count"], summary["keypress_count"], summary["mouse_activity_count"]) == (2, 3, 6)
    assert (summary["console_warn_count"], summary["event_count"], summary["block_count"]) == (1, 12, len(blocks))
    # 9 interactions 100 ms apart, over 4 blocks; as PostHog sums per batch, gaps across blocks don't count
    assert summary["active_milliseconds"] == 500

    deleted = run_gateway("gdpr", "delete", "--distinct-id", "alice", *gdpr)
    assert deleted.returncode == 0, deleted.stderr
    assert orjson.loads(deleted.stderr.splitlines()[-1])["recording_blocks"] == len(blocks)
    assert not list((data / "recordings" / "sessions").glob("*/session-alice/*"))
    assert run_gateway("recordings", "export", "session-alice", *common).returncode == 1

    assert list((data / "recordings" / "sessions").glob("*/session-old/*"))
    expired = run_gateway("recordings", "expire", *common)
    assert expired.returncode == 0, expired.stderr
    assert orjson.loads(expired.stderr.splitlines()[-1])["blocks"] >= 1
    assert not list((data / "recordings" / "sessions").glob("*/session-old/*"))
    assert run_gateway("recordings", "export", "session-old", *common).returncode == 1
