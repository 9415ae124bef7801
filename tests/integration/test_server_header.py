"""No `Server: Python/3.x aiohttp/3.x` header (version disclosure) on any answer of a real gateway process:
main port, admin port, over TLS and plain HTTP, for successes and for the gateway's own errors."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import requests

from gateway.edge.certs import write_dev_cert
from tests.support.inprocess import free_port
from tests.support.processes import GatewayProcess

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}


def event_body() -> bytes:
    event = {"event": "e", "uuid": str(uuid.uuid4()), "distinct_id": "d", "properties": {"token": "phc_server"}}
    return orjson.dumps(event)


def answers_of(main: str, admin: str, verify: str | bool) -> dict[str, requests.Response]:
    def call(method: str, url: str, **kwargs: object) -> requests.Response:
        return requests.request(method, url, verify=verify, timeout=5, **kwargs)

    return {
        "capture": call("POST", main + "/e/", data=event_body()),
        "bad body": call("POST", main + "/e/", data=b"{not json"),
        "unknown route": call("GET", main + "/nowhere"),
        "preflight": call("OPTIONS", main + "/e/", headers=PREFLIGHT),
        "readiness": call("GET", main + "/_readiness"),
        "admin": call("GET", admin + "/metrics"),
    }


def assert_no_server_header(answers: dict[str, requests.Response]) -> None:
    assert {name: r.status_code for name, r in answers.items()} == {
        "capture": 200, "bad body": 400, "unknown route": 404, "preflight": 200, "readiness": 200, "admin": 200,
    }  # fmt: skip
    assert {name: r.headers["Server"] for name, r in answers.items() if "Server" in r.headers} == {}
    assert all("Date" in r.headers for r in answers.values())  # aiohttp's other defaults are still written


def test_no_server_header_over_tls(tmp_path: Path) -> None:
    cert, key = write_dev_cert(tmp_path, ["127.0.0.1"])
    admin_port = free_port()
    args = ("--tls-cert", str(cert), "--tls-key", str(key), "--admin-port", str(admin_port))
    with GatewayProcess(tmp_path / "data", *args) as gateway:
        answers = answers_of(gateway.url, f"https://127.0.0.1:{admin_port}", str(cert))
    assert_no_server_header(answers)


def test_no_server_header_over_plain_http(tmp_path: Path) -> None:
    admin_port = free_port()
    with GatewayProcess(tmp_path / "data", "--admin-port", str(admin_port)) as gateway:
        answers = answers_of(gateway.url, f"http://127.0.0.1:{admin_port}", True)
    assert_no_server_header(answers)
