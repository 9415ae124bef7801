"""The bare aiohttp + uvloop baseline: read the body, decode it, parse it with orjson, answer 200.

It does the least work any PostHog-compatible gateway must do (gzip by magic bytes, base64 form,
JSON parse) and nothing else, so "gateway / baseline" shows what the gateway's own logic costs.
Run: `python -m bench.baseline_app --port 8001 [--workers 2]` (workers share the port via SO_REUSEPORT).
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import zlib
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import orjson
import uvloop
from aiohttp import web

GZIP_MAGIC = b"\x1f\x8b"
OK_BODY = b'{"status":"Ok"}'


def decode(body: bytes, content_type: str) -> bytes:
    """Undo the encodings posthog SDKs use: base64 form field, gzip found by its magic bytes."""
    if content_type == "application/x-www-form-urlencoded":
        body = base64.b64decode(parse_qs(body.decode())["data"][0])
    if body.startswith(GZIP_MAGIC):
        body = zlib.decompress(body, wbits=31)
    return body


async def handle(request: web.Request) -> web.Response:
    """Parse the payload and answer like capture does; 400 if it is not valid JSON."""
    body = await request.read()
    try:
        orjson.loads(decode(body, request.content_type))
    except (ValueError, KeyError, zlib.error):
        return web.Response(status=400, body=b'{"error":"invalid payload"}', content_type="application/json")
    return web.Response(body=OK_BODY, content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(handler: Handler = handle) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def serve(host: str, port: int, handler: Handler = handle) -> None:
    web.run_app(
        make_app(handler),
        host=host,
        port=port,
        reuse_port=True,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def main(argv: list[str] | None = None, handler: Handler = handle, description: str | None = __doc__) -> None:
    """Serve `handler` on --port with --workers processes (also used by bench.upstream_app)."""
    parser = argparse.ArgumentParser(description=(description or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.workers == 1:
        serve(args.host, args.port, handler)
        return
    workers = [mp.Process(target=serve, args=(args.host, args.port, handler)) for _ in range(args.workers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


if __name__ == "__main__":
    main()
