"""The bench package: SDK-shaped payloads decode like capture expects, the harness runs and logs acks.

Benchmark figures are never asserted as timings; only that a short run produces sane numbers.
"""

from __future__ import annotations

import base64
import gzip
import random
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from bench.net import free_port
from bench.payloads import PROFILES, BenchRequest, PayloadContext
from bench.recorder import Recorder, RunSummary, merge
from bench.report import status_warning, summary_json, summary_table
from bench.runner import run_load
from bench.servers import ManagedServer, baseline_app, nginx_config, upstream_app
from bench.suites import (
    SUITES,
    UPSTREAM_BASELINES,
    Measurement,
    SuiteOptions,
    SuiteSpec,
    _add_ratios,
    _server,
    suite_table,
)
from bench.worker import LoadConfig, run_process
from bench.wrk import write_requests
from gateway.capture import decode, parse
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env

TOKEN = "phc_test_bench"
GZIP_MAGIC = b"\x1f\x8b\x08"


def _ctx(**kwargs: object) -> PayloadContext:
    return PayloadContext(token=TOKEN, distinct_ids=50, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


def _decode(request: BenchRequest) -> object:
    """Decode the way capture-rs does: form `data` field, base64, gzip found by magic bytes."""
    body = request.body
    if request.headers.get("Content-Type") == "application/x-www-form-urlencoded":
        body = base64.b64decode(parse_qs(body.decode())["data"][0])
    if body.startswith(GZIP_MAGIC):
        body = gzip.decompress(body)
    return orjson.loads(body)


def _events(document: object) -> list[dict]:
    if isinstance(document, list):
        return document
    assert isinstance(document, dict)
    return document.get("batch", [document])


@pytest.mark.parametrize("profile", sorted(set(PROFILES) - {"flags"}))
def test_every_event_has_uuid_token_and_distinct_id(profile: str) -> None:
    request = PROFILES[profile](_ctx())
    document = _decode(request)
    events = _events(document)
    assert [e["uuid"] for e in events] == request.uuids
    for event in events:
        uuid.UUID(event["uuid"])
        assert event["event"]
        assert event.get("distinct_id") or event["properties"]["distinct_id"]
        token = document.get("api_key") if isinstance(document, dict) else None
        assert (token or event["properties"]["token"]) == TOKEN


def test_uuids_are_fresh_across_requests() -> None:
    ctx = _ctx()
    uuids = [u for _ in range(20) for u in PROFILES["js-gzip"](ctx).uuids]
    assert len(uuids) == len(set(uuids)) == 200


def test_js_gzip_is_text_plain_gzip_without_hint() -> None:
    request = PROFILES["js-gzip"](_ctx(batch_size=50))
    assert request.body.startswith(GZIP_MAGIC)
    assert request.headers == {"Content-Type": "text/plain"}
    assert request.path == "/e/"
    document = _decode(request)
    assert set(document) == {"api_key", "batch", "sent_at"}  # type: ignore[arg-type]
    assert len(request.uuids) == 50


def test_js_beacon_is_base64_form() -> None:
    request = PROFILES["js-beacon"](_ctx())
    assert parse_qs(urlsplit(request.path).query) == {"compression": ["base64"]}
    assert request.body.startswith(b"data=")
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_server_sdk_batches() -> None:
    python = PROFILES["python-batch"](_ctx())
    assert python.path == "/batch/" and len(python.uuids) == 100
    assert python.headers["Content-Type"] == "application/json"
    node = PROFILES["node-batch"](_ctx())
    assert node.headers["Content-Encoding"] == "gzip" and node.body.startswith(GZIP_MAGIC)
    assert _events(_decode(node))[0]["properties"]["$lib"] == "posthog-node"


def test_single_is_about_one_kilobyte() -> None:
    request = PROFILES["single"](_ctx())
    assert 1000 <= len(request.body) <= 1100
    assert isinstance(_decode(request), dict)


def test_replay_carries_session_window_and_snapshot_data() -> None:
    request = PROFILES["replay"](_ctx(replay_bytes=32 * 1024))
    assert request.path == "/s/" and request.body.startswith(GZIP_MAGIC)
    events = _decode(request)
    assert isinstance(events, list) and len(events) == 2
    assert {e["properties"]["$session_id"] for e in events} == {events[0]["properties"]["$window_id"]}
    assert all(e["event"] == "$snapshot" and e["properties"]["$snapshot_data"] for e in events)


def test_flags_request() -> None:
    request = PROFILES["flags"](_ctx())
    assert request.path == "/flags/?v=2" and not request.uuids
    body = orjson.loads(request.body)
    assert body["token"] == TOKEN and body["distinct_id"].startswith("user-")


@pytest.mark.parametrize("profile", sorted(set(PROFILES) - {"flags"}))
def test_gateway_decoder_accepts_payloads(profile: str) -> None:
    """The gateway's own decode + parse path accepts every profile."""
    request = PROFILES[profile](_ctx())
    split = urlsplit(request.path)
    payload = decode.decode_payload(
        request.body,
        {k: v[0] for k, v in parse_qs(split.query).items()},
        request.headers.get("Content-Type", ""),
        request.headers.get("Content-Encoding", ""),
        decode.is_legacy_path(split.path.rstrip("/")),
        decode.DecodeLimits(max_decompressed=100 * 1024 * 1024, max_ratio=1000.0),
    )
    parsed = parse.parse_request(payload, engage=False, query_sent_at=None)
    assert parsed is not None and parsed.token == TOKEN
    assert [e["uuid"] for e in parsed.events] == request.uuids


def test_wrk_request_file_format(tmp_path: Path) -> None:
    request = BenchRequest("POST", "/e/", {"Content-Type": "text/plain"}, b"\x1f\x8b\x08 body\n", ["u"])
    path = tmp_path / "requests.bin"
    write_requests(path, [request], "/prefix")
    assert path.read_bytes() == b"POST /prefix/e/ 9\nContent-Type: text/plain\n\n\x1f\x8b\x08 body\n"


def test_recorder_merges_processes() -> None:
    first, second = Recorder(0.0), Recorder(0.0)
    first.record(0.0, 0.002, "200", ["a", "b"], 10)
    second.record(0.5, 1.5, "503", ["c"], 5)
    summary = merge({"mode": "closed"}, [first.export(0.1), second.export(0.2)])
    assert summary.requests == 2 and summary.events_acked == 2 and summary.events_sent == 3
    assert summary.statuses == {"200": 1, "503": 1}
    assert [row["requests"] for row in summary.timeline] == [1, 1]
    assert summary.max_ms == pytest.approx(1000, rel=0.01)


def summary_of(statuses: dict[str, int]) -> RunSummary:
    recorder = Recorder(0.0)
    for status, count in statuses.items():
        for _ in range(count):
            recorder.record(0.0, 0.001, status, ["u"], 10)
    return merge({"mode": "closed", "target": "t", "profile": "single", "processes": 1, "connections": 1},
                 [recorder.export(0.0)])  # fmt: skip


def test_status_warning_above_ten_percent_not_2xx() -> None:
    assert status_warning(summary_of({"200": 90, "204": 1, "429": 10})) is None
    rate_limited = summary_of({"200": 14, "429": 86})
    warning = status_warning(rate_limited)
    assert warning is not None and warning.startswith("WARNING: 86% of 100 answers were not 2xx (429: 86, 200: 14)")
    assert warning.endswith("start the gateway under test with `gateway serve --rate-limit-ip off`")
    assert summary_table(rate_limited).splitlines()[-1] == warning
    assert summary_json(rate_limited)["warnings"] == [warning]
    failing = status_warning(summary_of({"200": 80, "503": 15, "timeout": 5}))
    assert failing is not None and "(200: 80, 503: 15, timeout: 5)" in failing and "rate-limit" not in failing


def test_load_against_the_default_gateway_warns_about_its_429s(tmp_path: Path) -> None:
    """The README's gateway (default per-IP limit) under `python -m bench load`: the output says what went wrong."""
    with GatewayProcess(tmp_path / "data") as gateway:
        result = subprocess.run(
            [sys.executable, "-m", "bench", "load", "--target", gateway.url, "--profile", "single",
             "--requests", "1000", "--connections", "4", "--quiet"],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=gateway_env(),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    warning = result.stdout.splitlines()[-1]
    assert warning.startswith("WARNING: ") and "were not 2xx (429: " in warning, result.stdout
    assert "`gateway serve --rate-limit-ip off`" in warning


@pytest.fixture(scope="module")
def baseline() -> Iterator[ManagedServer]:
    with baseline_app() as server:
        yield server


def test_closed_loop_against_baseline(baseline: ManagedServer, tmp_path: Path) -> None:
    acked = tmp_path / "acked.log"
    config = LoadConfig(
        target=baseline.url,
        profile="js-gzip",
        duration_s=2.0,
        connections=8,
        token=TOKEN,
        acked_log=str(acked),
    )
    summary = run_load(config, progress_stream=sys.stderr)
    assert summary.requests > 10
    assert summary.statuses == {"200": summary.requests} and status_warning(summary) is None
    assert summary.req_per_s > 0 and 0 < summary.percentile_ms(50) <= summary.percentile_ms(99)
    lines = acked.read_text().split()
    assert len(lines) == len(set(lines)) == summary.events_acked == summary.requests * 10


def test_open_loop_over_two_processes(baseline: ManagedServer, tmp_path: Path) -> None:
    acked = tmp_path / "acked.log"
    config = LoadConfig(
        target=baseline.url,
        profile="single",
        mode="open",
        rate=200,
        duration_s=1.0,
        processes=2,
        acked_log=str(acked),
    )
    summary = run_load(config, progress_stream=None)
    assert summary.requests == 200 and summary.statuses == {"200": 200}
    assert len(summary.cpu_s) == 2
    assert len(set(acked.read_text().split())) == 200


def test_connection_errors_are_counted_by_name() -> None:
    """Nothing listens on the port: every request ends as a named client error, none is lost."""
    config = LoadConfig(
        target=f"http://127.0.0.1:{free_port()}", profile="single", max_requests=5, connections=1
    )
    summary = merge({}, [run_process(config, lambda counters: None)])  # in-process: no spawn needed
    assert summary.requests == 5 and summary.events_acked == 0
    assert list(summary.statuses) == ["error:ClientConnectorError"]


def test_nginx_config_return_200_and_proxy_pass(tmp_path: Path) -> None:
    plain = nginx_config(1, tmp_path, 8080)
    assert "return 200" in plain and "proxy_pass" not in plain
    proxy = nginx_config(2, tmp_path, 8080, upstream="127.0.0.1:9000")
    assert "return 200" not in proxy and "worker_processes 2;" in proxy
    assert "proxy_pass http://bench_upstream;" in proxy and "server 127.0.0.1:9000;" in proxy
    assert 'proxy_set_header Connection "";' in proxy  # keep-alive to the upstream
    assert proxy.count("{") == proxy.count("}")


def test_upstream_suite_targets_proxy_to_the_upstream(tmp_path: Path) -> None:
    upstream = ManagedServer("upstream", ["true"], 9000, tmp_path)
    options = SuiteOptions(gateway_command=["gw"])
    servers = [_server(t, options, upstream) for t in ("gateway", "gateway-passthrough")]
    try:
        forward, passthrough = (s.argv for s in servers)
    finally:
        for server in servers:
            shutil.rmtree(server.workdir, ignore_errors=True)
    assert forward[:2] == ["gw", "serve"] and forward[forward.index("--rate-limit-ip") + 1] == "off"
    assert forward[-4:] == ["--upstream", "http://127.0.0.1:9000", "--upstream-events-mode", "forward"]
    assert passthrough[-5:] == [*forward[-4:], "--upstream-passthrough"]
    assert set(SUITES["upstream"].baselines) <= set(SUITES["upstream"].targets)


def test_ratios_and_table_use_the_suite_baselines() -> None:
    def m(target: str, req_per_s: float) -> Measurement:
        return Measurement("flags-v2", target, "wrk", req_per_s=req_per_s, server_cpu=0.5)

    measurements = [m("upstream", 4000), m("nginx-proxy", 2000), m("gateway-passthrough", 1000)]
    _add_ratios(measurements, UPSTREAM_BASELINES)
    assert measurements[2].ratios == {
        "nginx-proxy": 0.5, "nginx-proxy_per_cpu": 0.5, "upstream": 0.25, "upstream_per_cpu": 0.25
    }
    table = suite_table(measurements, [], SuiteOptions(), UPSTREAM_BASELINES)
    assert "x nginx-proxy" in table and "x upstream/cpu" in table and "x aiohttp" not in table
    assert "gateway-passthrough wrk" in " ".join(table.split())


def test_upstream_app_answers_capture_and_canned_flags() -> None:
    with upstream_app() as server:
        for path, key in (("/batch/", "status"), ("/flags/?v=2", "flags")):
            request = urllib.request.Request(server.url + path, data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200 and key in orjson.loads(response.read())


def test_suite_scenarios_option_selects_scenarios(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.cli

    seen: list[tuple[str, ...]] = []

    def fake_run_suite(spec: SuiteSpec, options: SuiteOptions) -> tuple[list, list]:
        seen.append(tuple(s.name for s in spec.scenarios))
        return [], []

    monkeypatch.setattr(bench.cli, "run_suite", fake_run_suite)
    assert bench.cli.main(["suite", "capture", "--scenarios", "single-1kb", "--tools", "wrk"]) == 0
    assert seen == [("single-1kb",)]
    with pytest.raises(SystemExit, match="unknown scenarios for suite capture: nope"):
        bench.cli.main(["suite", "capture", "--scenarios", "single-1kb,nope"])
