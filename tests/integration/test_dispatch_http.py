"""The server's one dispatcher (gateway/http/dispatch.py): capture paths are answered without the
router, everything else through the app; both ways answer with the same edge headers."""

from __future__ import annotations

import http.client
import socket
import uuid
from collections.abc import Iterator

import orjson
import pytest

from tests.support.inprocess import InProcessGateway, settings_for

TOKEN = "phc_dispatch"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    settings = settings_for(tmp_path_factory.mktemp("dispatch"), event_body_limit=1024, fsync="never")
    with InProcessGateway(settings) as running:
        yield running


def event_body() -> bytes:
    return orjson.dumps({"event": "e", "uuid": str(uuid.uuid4()), "distinct_id": "d", "properties": {"token": TOKEN}})


def call(gateway: InProcessGateway, method: str, path: str, body: bytes | None = None, **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Origin": ORIGIN, **headers})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("POST", "/e/", {}),  # the dispatcher
        ("POST", "/i/v0/e", {}),
        ("POST", "/e/", {"Expect": "100-continue"}),  # through the app, which answers the Expect
        ("GET", "/_liveness", {}),  # through the router
        ("GET", "/nowhere", {}),  # the router's 404
    ],
)
def test_every_way_in_answers_with_the_edge_headers(
    gateway: InProcessGateway, method: str, path: str, extra: dict[str, str]
) -> None:
    body = event_body() if method == "POST" else None
    status, headers, _ = call(gateway, method, path, body, **{"X-Request-Id": "rid-1", **extra})
    assert status == (404 if path == "/nowhere" else 200)
    assert headers["X-Request-Id"] == "rid-1"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert "Server" not in headers and "Date" in headers


def test_method_policy_applies_on_a_directly_served_path(gateway: InProcessGateway) -> None:
    status, headers, body = call(gateway, "PUT", "/e/", event_body())
    assert status == 405 and orjson.loads(body)["code"] == "method_not_allowed"
    assert headers["X-Request-Id"] and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = call(gateway, "OPTIONS", "/e/", **{"Access-Control-Request-Method": "POST"})
    assert status == 200 and headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, OPTIONS"


def test_chunked_body_received_whole_is_held_to_the_route_limit(gateway: InProcessGateway) -> None:
    """A chunked body (no Content-Length) that arrived with its headers still meets --event-body-limit."""
    chunk = b"x" * 2000
    request = (
        b"POST /e/ HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert orjson.loads(body)["code"] == "payload_too_large"
