"""`gateway check URL` against running gateways: exit 0 healthy, 1 degraded, 2 down."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.capture.record import Record
from gateway.cli import main
from gateway.sinks.base import Readiness
from tests.support.inprocess import InProcessGateway, free_port, settings_for

TOKEN = "phc_check_token"


def check(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> tuple[int, str]:
    code = main(["check", url, "--token", TOKEN, "--timeout", "3", *extra])
    return code, capsys.readouterr().out


def test_healthy_gateway_without_flags_is_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with InProcessGateway(settings_for(tmp_path)) as gateway:
        code, out = check(capsys, gateway.url, "--skip-flags")
    assert code == 0, out
    assert out.splitlines()[0].startswith("capture    ok        200 in")
    assert out.splitlines()[-1] == f"{gateway.url}: ok"


def test_flags_not_served_is_degraded_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with InProcessGateway(settings_for(tmp_path)) as gateway:
        code, out = check(capsys, gateway.url)
    assert code == 1, out
    assert "flags      degraded  404: flags not served" in out


def test_kafka_down_is_degraded_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(
        tmp_path, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_ack_timeout_ms=300.0
    )
    with InProcessGateway(settings) as gateway:
        code, out = check(capsys, gateway.url, "--skip-flags")
    assert code == 1, out
    assert "capture    ok" in out and "readiness  degraded  spooling" in out


class NotReadySink:
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def deliver(self, records: Sequence[Record]) -> None: ...

    def readiness(self) -> Readiness:
        return Readiness(ready=False, degraded=True, detail="spool full")


def test_not_ready_is_down_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with InProcessGateway(settings_for(tmp_path), sink=NotReadySink()) as gateway:
        code, out = check(capsys, gateway.url, "--skip-flags")
    assert code == 2, out
    assert "readiness  down      503" in out and "spool full" in out


def test_nothing_listening_is_down_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, f"http://127.0.0.1:{free_port()}")
    assert code == 2, out
    assert "capture    down      no answer" in out


@pytest.fixture
def flags_serving_stub() -> Iterator[str]:
    """A stand-in for a gateway with a flags upstream (not on this branch yet): every probe answers 200."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"flags": {}}' if self.path.startswith("/flags/") else b'{"status": "ok", "detail": "kafka"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None: ...

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_flags_served_is_healthy_0(flags_serving_stub: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, flags_serving_stub)
    assert code == 0, out
    assert "flags      ok        200 in" in out
