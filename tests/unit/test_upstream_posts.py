"""The upstream sink's lean POST client: response framing (httptools), keep-alive reuse, failures."""

from __future__ import annotations

import asyncio
import re
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
from gateway.upstream.posts import PostClient

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


Script = list[bytes | None]  # written piece by piece with a pause between; None: the server closes
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = (b"HTTP/1.1 100 Continue\r\n\r\n",
           b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n wor",
           b"ld\r\n0\r\nX-Trailer: 1\r\n", b"\r\n")


async def _raw_upstream(answers: list[Script]) -> tuple[asyncio.Server, URL, list[int]]:
    """Answers the n-th request with answers[n], byte for byte; the list counts accepted connections."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"Content-Length: (\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                for piece in answers.pop(0):
                    if piece is None:
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"), accepted


@LOOPS
@pytest.mark.parametrize(("script", "answer", "reused"), [
    ([b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 12\r\nContent-Type: application/json\r\n\r\n{\"sta", b"tus\":1}"],
     (200, b'{"status":1}'), True),
    (list(CHUNKED), (400, b"hello world"), True),  # a 1xx is skipped; chunk extension and trailer read
    ([b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"], (503, b""), False),
    ([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], (200, b"ok"), False),
    ([b"HTTP/1.1 200 OK\r\n\r\npart", b"ial", None], (200, b"partial"), False),  # the body ends at EOF
    ([OK + b"HTTP/1.1 200 OK\r\n"], (200, b"ok"), False),  # bytes nobody asked for: not trusted again
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"st", None], "error", False),
    ([*CHUNKED[:2], None], "error", False),
    ([CHUNKED[0], None], "error", False),  # a 1xx is not the answer
    ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], "error", False),
    ([b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000], "error", False),  # not a timeout: refused at 64 KB
    ([b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"], "error", False),
], ids=["content-length", "1xx-chunked", "connection-close", "http10", "until-eof", "extra-bytes",
        "cut-body", "cut-chunked", "only-1xx", "not-http", "head-too-large", "bad-length"])
def test_answers_are_framed_and_only_clean_keep_alive_connections_are_reused(
    script: Script, answer: tuple[int, bytes] | str, reused: bool,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def main() -> tuple[tuple[int, bytes] | str, tuple[int, bytes], int]:
        server, base, accepted = await _raw_upstream([script, [OK]])
        client = PostClient(base, connections=2, retries=0)
        try:
            try:
                first: tuple[int, bytes] | str = await client.post("/e/", (), b"{}", route="test", timeout=5)
            except UpstreamError as exc:
                first = exc.cause
            second = await client.post("/e/", (), b"{}", route="test", timeout=5)
            return first, second, accepted[0]
        finally:
            await client.close()
            server.close()

    first, second, connections = run(main, loop_factory)
    assert first == answer and second == (200, b"ok")
    assert connections == (1 if reused else 2)


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
