"""Embedded mode end to end: `gateway serve` (spool) → `gateway recordings sink` (chdb + a directory) →
export, DLQ, a large session split into blocks, `gateway gdpr export|delete` and retention; next to
`gateway sink` on the same spool; and a large backlog drained with /metrics answering throughout. SIGUSR2
makes the recordings sink log its stacks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import requests

from tests.recordings.replay import TOKEN, now_ms, post_snapshots, rrweb_session, sink_process
from tests.support.inprocess import free_port
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env, run_gateway
from tests.support.waiting import wait_for

pytest.importorskip("chdb")
DAY_MS = 86_400_000


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
        # A bad-day tool: SIGUSR2 logs where the sink's tasks wait, and the sink runs on.
        log = data.parent / "recordings-sink.log"
        sink.send_signal(signal.SIGUSR2)
        wait_for(lambda: "stack dump on SIGUSR2:\ntask " in log.read_text(errors="replace"), 10, "a stack dump")
        assert "thread MainThread" in log.read_text(errors="replace") and sink.poll() is None
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


def test_export_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`gateway recordings export … --out - | head -c 10`: like `gateway spool dump | head`, the export stops
    when its reader has gone (exit 1), without an error line or a BrokenPipeError traceback."""
    data = tmp_path / "data"
    with GatewayProcess(data) as gateway:  # ~240 KB of events: more than a pipe's buffer holds
        post_snapshots(gateway.url, "session-erin", "erin", rrweb_session(now_ms() - 60_000, padding=20_000))
    sink = sink_process(data, "--block-max-age", "0.2", "--recordings-retention-interval", "0")
    try:
        wait_for(lambda: list((data / "recordings" / "sessions").glob("*/session-erin/*")), timeout=60,
                 what="a block of the session")
        time.sleep(1)
    finally:
        sink.terminate()
        assert sink.wait(30) == 0, (data.parent / "recordings-sink.log").read_text()[-3000:]
    export = subprocess.Popen(
        [sys.executable, "-m", "gateway", "recordings", "export", "session-erin", "--out", "-", "--data-dir",
         str(data), "--clickhouse", f"chdb://{data}/chdb"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gateway_env(), cwd=REPO_ROOT)
    assert export.stdout is not None and export.stderr is not None
    assert export.stdout.read(10) == b"[\n{\"type\":"
    export.stdout.close()  # what `head -c 10` does once it has its bytes
    assert export.wait(60) == 1
    assert export.stderr.read() == b""


def metric(url: str, name: str) -> float:
    """A counter's value from /metrics, 0 while the process is not listening yet."""
    try:
        text = requests.get(url, timeout=5).text
    except requests.ConnectionError:
        return 0.0
    found = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(found[0]) if found else 0.0


def test_events_sink_leaves_recordings_to_the_recordings_sink_on_the_same_spool(tmp_path: Path) -> None:
    """`gateway sink` stores the analytics events and skips the `$snapshot_items` records, which the
    recordings sink, reading the same spool at the same time under its own cursor, stores exactly once.
    Heatmaps and client ingestion warnings (topics outside its --topics, as in Kafka mode) are skipped too."""
    data = tmp_path / "data"
    session = rrweb_session(now_ms() - 60_000)
    with GatewayProcess(data) as gateway:
        post_snapshots(gateway.url, "session-dave", "dave", session)
        batch = [{"event": f"viewed-{n}", "properties": {"distinct_id": "dave"}} for n in range(3)]
        batch += [{"event": name, "properties": {"distinct_id": "dave"}}
                  for name in ("$$heatmap", "$$client_ingestion_warning", "$$heatmap")]
        assert requests.post(f"{gateway.url}/batch/", json={"api_key": TOKEN, "batch": batch}, timeout=10).ok
    requests_sent = -(-len(session) // 3)
    port = free_port()
    events_log = open(tmp_path / "events-sink.log", "ab")  # noqa: SIM115 (closed with the process)
    events_sink = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sink", "--data-dir", str(data), "--clickhouse",
         f"chdb://{data}/chdb-events", "--metrics-port", str(port), "--log-format", "text"],
        stdout=events_log, stderr=subprocess.STDOUT, env=gateway_env(), cwd=REPO_ROOT)
    recordings_sink = sink_process(data, "--block-max-age", "0.2", "--recordings-retention-interval", "0")
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"
        skipped = 'gateway_sink_messages_skipped_total{topic="%s"}'
        wait_for(lambda: metric(metrics, "gateway_sink_rows_inserted_total") == 3
                 and metric(metrics, skipped % "session_recording_snapshot_item_events") == requests_sent
                 and metric(metrics, skipped % "heatmaps_ingestion") == 2
                 and metric(metrics, skipped % "ingestion-clientwarnings-main-1") == 1,
                 timeout=90, what="the events sink to store 3 events and skip the other topics' records")
        exposition = requests.get(metrics, timeout=5).text
        assert "gateway_log_records_suppressed_total" in exposition  # every process's own families only:
        assert "gateway_http_requests" not in exposition  # none of `gateway serve`'s
        ready = requests.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert (ready.status_code, ready.json()) == (200, {"ready": True, "reason": None})
        assert metric(metrics, "gateway_sink_ready") == 1
        wait_for(lambda: list((data / "recordings" / "sessions").glob("*/session-dave/*")), timeout=60,
                 what="a block of the session")
        time.sleep(1)
    finally:
        events_sink.terminate()
        recordings_sink.terminate()
        assert events_sink.wait(30) == 0, (tmp_path / "events-sink.log").read_text()[-3000:]
        assert recordings_sink.wait(30) == 0, (data.parent / "recordings-sink.log").read_text()[-3000:]
    assert metric_rows_of(tmp_path, data, "dave") == ["viewed-0", "viewed-1", "viewed-2"]
    out = tmp_path / "dave.json"
    exported = run_gateway("recordings", "export", "session-dave", "--out", str(out), "--data-dir", str(data),
                           "--clickhouse", f"chdb://{data}/chdb")
    assert exported.returncode == 0, exported.stderr
    assert orjson.loads(out.read_bytes()) == session


def metric_rows_of(tmp_path: Path, data: Path, distinct_id: str) -> list[str]:
    """The event names of the person's rows in the events table (`gateway gdpr export`)."""
    exported = run_gateway("gdpr", "export", "--distinct-id", distinct_id, "--out", "-", "--clickhouse",
                           f"chdb://{data}/chdb-events", "--recordings-storage", str(tmp_path / "no-recordings"),
                           "--audit-log", str(tmp_path / "audit.jsonl"))
    assert exported.returncode == 0, exported.stderr
    rows = [orjson.loads(line) for line in exported.stdout.splitlines()]
    return sorted(row["event"] for row in rows if "event" in row)


def test_metrics_answer_within_a_second_while_a_large_backlog_is_drained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    start = now_ms() - 60_000
    sessions, repeats = 20, 1000
    # 240,000 small rrweb events (seconds of work for the sink) in 480 requests from one client
    with GatewayProcess(data, "--rate-limit-ip", "off") as gateway:
        for n in range(sessions):
            post_snapshots(gateway.url, f"session-{n}", f"user-{n}", rrweb_session(start) * repeats,
                           per_request=500)
    expected = sessions * len(rrweb_session(start)) * repeats
    port = free_port()
    sink = sink_process(data, "--recordings-http-port", str(port), "--recordings-retention-interval", "0")
    slowest, stored = 0.0, 0.0
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: _answers(url), timeout=60, what="the recordings sink's /metrics")
        deadline = time.monotonic() + 300
        while stored < expected and time.monotonic() < deadline:
            asked = time.monotonic()
            stored = metric(url, "recordings_snapshot_items_stored_total")
            slowest = max(slowest, time.monotonic() - asked)
            time.sleep(0.1)
    finally:
        sink.terminate()
        assert sink.wait(30) == 0, (data.parent / "recordings-sink.log").read_text()[-3000:]
    assert stored == expected
    assert slowest < 1.0, f"/metrics took {slowest:.2f} s to answer during the drain"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False
