"""The upstream sink's lean POST client: response framing, keep-alive reuse, failures."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from yarl import URL

from gateway.edge.certs import write_dev_cert
from gateway.upstream.client import UpstreamError
from gateway.upstream.posts import PostClient, ProtocolError, Response, parse_response


def test_content_length_body_complete_only_when_all_bytes_arrived() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n{\"status\":1}"
    for cut in (10, len(raw) - 1):
        assert parse_response(raw[:cut], eof=False) is None
    assert parse_response(raw, eof=False) == (Response(200, b'{"status":1}', True), len(raw))
    with pytest.raises(ProtocolError):
        parse_response(raw[:-1], eof=True)


def test_chunked_body_with_extension_and_trailer_after_a_100_continue() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert parse_response(raw[:-2], eof=False) is None
    assert parse_response(raw, eof=False) == (Response(400, b"hello world", True), len(raw))


def test_connection_close_http10_and_close_delimited_bodies_are_not_kept() -> None:
    close = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert parse_response(close, eof=False) == (Response(503, b"", False), len(close))
    http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert parse_response(http10, eof=False) == (Response(200, b"ok", False), len(http10))
    until_close = b"HTTP/1.1 200 OK\r\n\r\npartial"
    assert parse_response(until_close, eof=False) is None
    assert parse_response(until_close, eof=True) == (Response(200, b"partial", False), len(until_close))


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", eof=False)
    with pytest.raises(ProtocolError):
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", eof=False)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                                ids=["asyncio", "uvloop"])  # the gateway runs on uvloop


def run(main: Callable[[], Awaitable[object]], loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


async def _serve(handler: Handler, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, URL]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    return runner, URL(f"{'https' if tls else 'http'}://127.0.0.1:{port}/base")


@LOOPS
def test_posts_reuse_one_connection_and_arrive_as_sent(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    seen: list[tuple[str, str, dict[str, str], bytes, object]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append((request.method, request.raw_path, dict(request.headers), body,
                     request.transport.get_extra_info("peername") if request.transport else None))
        if request.raw_path.endswith("chunked"):
            response = web.StreamResponse(status=200)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"status":')
            await response.write(b"1}")
            await response.write_eof()
            return response
        return web.json_response({"status": 1})

    ports: list[int | None] = []

    async def main() -> list[tuple[int, bytes]]:
        runner, base = await _serve(handler)
        ports.append(base.port)
        client = PostClient(base, connections=4, retries=0)
        try:
            headers = (("Content-Type", "text/plain"), ("X-Forwarded-For", "198.51.100.9"))
            return [await client.post(path, headers, b"x" * 5000, route="test", timeout=5)
                    for path in ("/e/?ver=1&_=17", "/batch/", "/chunked")]
        finally:
            await client.close()
            await runner.cleanup()

    answers = run(main, loop_factory)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert {body for _, body in answers} == {b'{"status": 1}', b'{"status":1}'}
    assert [path for _, path, _, _, _ in seen] == ["/base/e/?ver=1&_=17", "/base/batch/", "/base/chunked"]
    assert len({peer for *_, peer in seen}) == 1  # one keep-alive connection for all three
    for method, _, headers, body, _ in seen:
        assert method == "POST" and body == b"x" * 5000 and headers["Content-Length"] == "5000"
        assert headers["X-Forwarded-For"] == "198.51.100.9" and headers["Host"] == f"127.0.0.1:{ports[0]}"


@LOOPS
def test_closed_connections_are_replaced_and_failures_are_upstream_errors(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if request.raw_path == "/slow":
            await asyncio.sleep(1)
        return web.Response(text="bye", headers={"Connection": "close"})

    async def main() -> tuple[list[int], str, str]:
        runner, base = await _serve(handler)
        client = PostClient(base.with_path("/"), connections=4, retries=0)
        try:
            statuses = [(await client.post("/e/", (), b"{}", route="test", timeout=5))[0] for _ in range(2)]
            with pytest.raises(UpstreamError) as slow:
                await client.post("/slow", (), b"{}", route="test", timeout=0.2)
        finally:
            await client.close()
            await runner.cleanup()
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        refused = PostClient(URL(f"http://127.0.0.1:{port}"), connections=1, retries=1)
        with pytest.raises(UpstreamError) as connect:
            await refused.post("/e/", (), b"{}", route="test", timeout=5)
        return statuses, slow.value.cause, connect.value.cause

    statuses, slow, connect = run(main, loop_factory)
    assert statuses == [200, 200] and len(set(peers[:2])) == 2  # `Connection: close` is honoured
    assert slow == "timeout" and connect == "connect_error"


@LOOPS
def test_https_upstream_is_verified(tmp_path: Path, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    cert, key = write_dev_cert(tmp_path, ("127.0.0.1",))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"{request.host} {len(await request.read())}")

    async def main() -> tuple[tuple[int, bytes], str]:
        runner, base = await _serve(handler, server_tls)
        trusting = PostClient(base, connections=2, retries=0, ssl_context=ssl.create_default_context(cafile=cert))
        system = PostClient(base, connections=2, retries=0)  # the system's CAs do not know the dev cert
        try:
            answer = await trusting.post("/e/", (), b"{}", route="test", timeout=5)
            with pytest.raises(UpstreamError) as refused:
                await system.post("/e/", (), b"{}", route="test", timeout=5)
            return answer, refused.value.cause
        finally:
            await trusting.close()
            await runner.cleanup()

    (status, body), refused = run(main, loop_factory)
    assert status == 200 and body.endswith(b" 2") and body.startswith(b"127.0.0.1:")
    assert refused == "connect_error"


@pytest.mark.parametrize(("base", "host", "prefix"), [
    ("https://eu.i.posthog.com", b"Host: eu.i.posthog.com\r\n", b""),
    ("http://[::1]:8000/ingest/", b"Host: [::1]:8000\r\n", b"/ingest"),
])
def test_host_header_and_path_prefix_come_from_the_upstream_url(base: str, host: bytes, prefix: bytes) -> None:
    client = PostClient(URL(base), connections=1, retries=0)
    assert (client._host, client._prefix) == (host, prefix)
