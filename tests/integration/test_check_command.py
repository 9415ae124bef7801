"""`gateway check URL`, run as a subprocess against running gateways: exit 0 healthy, 1 degraded, 2 down.

Also: the check event is answered like a real one but stored nowhere (spool, upstream, sink).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from gateway.core.readiness import Readiness
from gateway.core.record import Record
from tests.support.fake_posthog import FakePostHog
from tests.support.inprocess import InProcessGateway, free_port, settings_for
from tests.support.processes import REPO_ROOT, GatewayProcess, gateway_env, spool_dump

TOKEN = "phc_check_token"


def check(url: str, *extra: str) -> tuple[int, str, str]:
    """`gateway check` as a user runs it: exit code, stdout, stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", url, "--token", TOKEN, "--timeout", "3", *extra],
        capture_output=True, text=True, env=gateway_env(), cwd=REPO_ROOT, timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The README's default gateway: embedded spool, no upstream (so no flags)."""
    with GatewayProcess(tmp_path_factory.mktemp("embedded") / "data") as gateway:
        yield gateway


def test_healthy_embedded_gateway_is_0(embedded: GatewayProcess) -> None:
    code, out, err = check(embedded.url)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("capture    ok        200 in")
    assert lines[1] == "flags      ok        skipped: this gateway does not serve flags (no --upstream)"
    assert lines[2] == "readiness  ok        spool"
    assert lines[-1] == f"{embedded.url}: ok"


def test_host_port_means_http(embedded: GatewayProcess) -> None:
    code, out, err = check(f"127.0.0.1:{embedded.port}")
    assert code == 0, out + err
    assert out.splitlines()[-1] == f"http://127.0.0.1:{embedded.port}: ok"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8000", "http://", "127.0.0.1:notaport", "http://h:99999"])
def test_unparsable_url_is_one_line_usage_error_2(url: str) -> None:
    code, out, err = check(url)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"gateway: error: url ({url}): "), err


def test_missing_cafile_is_one_line_usage_error_2(tmp_path: Path) -> None:
    code, out, err = check("https://127.0.0.1:1", "--cafile", str(tmp_path / "nope.pem"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"gateway: error: cafile ({tmp_path / 'nope.pem'}): "), err


def dropped_check_events(url: str) -> float:
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith('capture_events_dropped_total{cause="gateway_check"}'):
            return float(line.split()[-1])
    return 0.0


def test_check_event_is_answered_but_never_spooled(embedded: GatewayProcess) -> None:
    before = dropped_check_events(embedded.url)
    real = {"api_key": TOKEN, "event": "real", "distinct_id": "u1", "properties": {}}
    assert requests.post(embedded.url + "/i/v0/e/", json=real, timeout=5).status_code == 200
    mixed = [{"event": "$gateway_check", "distinct_id": "x", "properties": {}}, {**real, "event": "mixed"}]
    batch = {"api_key": TOKEN, "batch": mixed}
    assert requests.post(embedded.url + "/batch/", json=batch, timeout=5).status_code == 200
    code, out, err = check(embedded.url)
    assert code == 0, out + err
    names = [record["data"]["event"] for record in spool_dump(embedded.data_dir)]
    assert "real" in names and "mixed" in names  # the dump does show what was stored
    assert "$gateway_check" not in names
    assert dropped_check_events(embedded.url) == before + 2


def test_gateway_with_upstream_checks_flags_and_forwards_no_check_event(tmp_path: Path) -> None:
    with FakePostHog() as upstream, GatewayProcess(tmp_path / "data", "--upstream", upstream.url) as gateway:
        code, out, err = check(gateway.url)
        assert code == 0, out + err
        assert "flags      ok        200 in" in out
        assert len(upstream.requests_to("/flags/")) == 1
        assert upstream.requests_to("/i/v0/e/") == []  # --upstream-events-mode forward: nothing forwarded


def test_gateway_under_a_prefix_is_checked_there(tmp_path: Path) -> None:
    """`gateway check https://host/ingest` (the README's `[/prefix]`): capture, flags and readiness all under it."""
    with FakePostHog() as upstream, GatewayProcess(tmp_path / "data", "--upstream", upstream.url,
                                                   "--prefix", "/ingest") as gateway:
        code, out, err = check(gateway.url + "/ingest")
        assert code == 0, out + err
        assert "flags      ok        200 in" in out and "readiness  ok" in out
        assert len(upstream.requests_to("/flags/")) == 1


def test_tls_with_private_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, "-m", "gateway", "certs", "dev", "--out", str(certs)],
                   check=True, capture_output=True, env=gateway_env(), cwd=REPO_ROOT, timeout=60)
    tls = ("--tls-cert", str(certs / "cert.pem"), "--tls-key", str(certs / "key.pem"))
    with GatewayProcess(tmp_path / "data", *tls) as gateway:
        assert gateway.url.startswith("https://")
        code, out, err = check(gateway.url)
        assert code == 2, out + err
        assert "capture    down      no answer" in out and "CERTIFICATE_VERIFY_FAILED" in out
        code, out, err = check(gateway.url, "--cafile", str(certs / "cert.pem"))
        assert code == 0, out + err


def test_kafka_down_is_degraded_1(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_ack_timeout_ms=300.0
    )
    with InProcessGateway(settings) as gateway:
        code, out, err = check(gateway.url)
    assert code == 1, out + err
    assert "capture    ok" in out and "readiness  degraded  spooling" in out


class NotReadySink:
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def deliver(self, records: Sequence[Record]) -> None:
        raise AssertionError("nothing may be delivered")

    def readiness(self) -> Readiness:
        return Readiness(ready=False, degraded=True, detail="spool full")


def test_not_ready_is_down_2(tmp_path: Path) -> None:
    with InProcessGateway(settings_for(tmp_path), sink=NotReadySink()) as gateway:
        code, out, err = check(gateway.url)
    assert code == 2, out + err
    assert "capture    down      503 service_unavailable" in out  # as a real event would be answered
    assert "readiness  down      503" in out and "spool full" in out


def test_nothing_listening_is_down_2() -> None:
    code, out, err = check(f"http://127.0.0.1:{free_port()}")
    assert code == 2, out + err
    assert "capture    down      no answer" in out


@pytest.fixture
def not_a_gateway() -> Iterator[str]:
    """A server whose /_readiness does not say whether it serves flags: the check evaluates one."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/flags/"):
                status, body = 404, b"not here"
            else:
                status, body = 200, b'{"status": "ok", "detail": "kafka"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None: ...

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_flags_failing_where_not_known_is_degraded_1(not_a_gateway: str) -> None:
    code, out, err = check(not_a_gateway)
    assert code == 1, out + err
    assert "flags      degraded  404: flags not served here (use --skip-flags if expected)" in out
    code, out, err = check(not_a_gateway, "--skip-flags")
    assert code == 0, out + err
