"""A stand-in for PostHog Cloud on loopback (it cannot be reached from here): a real aiohttp server that
records every request it gets and answers like PostHog's capture, flags and assets hosts.

`flag_definitions` (project token → definitions document) is served at `/flags/definitions` with an
ETag, answering 304 to a matching If-None-Match.

Failure modes: `status_override` (every answer has that status), `delay` (seconds before answering),
`redirect_flags` (/flags answers 308) and `stop()`/`start()` (nothing listening: connection refused),
all switchable while a test runs.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ssl
import threading
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.support.inprocess import free_port

ARRAY_JS = b"/* posthog-js loader */ !function(){window.posthog_loaded=true}();\n"
BINARY = bytes(range(256)) * 64 + b"\x00\xff\x1f\x8b\x08"  # includes gzip magic, NULs, all byte values
GZIP_JS = b"console.log('gzipped asset');\n" * 50
FLAGS_V2 = {
    "flags": {
        "beta": {
            "key": "beta",
            "enabled": True,
            "variant": "variant-a",
            "reason": {"code": "condition_match", "condition_index": 0, "description": "Matched"},
            "metadata": {"id": 1, "version": 3, "description": None, "payload": None},
        }
    },
    "errorsWhileComputingFlags": False,
    "requestId": "0d7c1c3e-0000-4000-8000-000000000000",
}
FLAGS_V1 = {"featureFlags": {"beta": "variant-a"}, "featureFlagPayloads": {}, "errorsWhileComputingFlags": False}


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


@dataclass
class Received:
    """One request as the upstream saw it."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes
    status: int = 0  # what the fake answered (0 while it has not)

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    def json(self) -> dict:
        body = gzip.decompress(self.body) if self.headers.get("Content-Encoding") == "gzip" else self.body
        return orjson.loads(body)


@dataclass
class FakePostHog:
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    status_override: int | None = None
    delay: float = 0.0
    asset_max_age: int = 60
    redirect_flags: bool = False
    flag_definitions: dict[str, dict] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None  # serve HTTPS (e.g. with a certificate clients do not trust)

    def __post_init__(self) -> None:
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    # --- lifecycle (called from the test thread) ---
    def start(self) -> FakePostHog:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FakePostHog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def requests_to(self, path: str, status: int | None = None) -> list[Received]:
        """Requests received on `path` (only those answered `status`, if given)."""
        return [r for r in list(self.received) if r.path == path and (status is None or r.status == status)]

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context
        ).start()

    # --- what PostHog answers ---
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(request.method, request.raw_path, CIMultiDict(request.headers), await request.read())
        self.received.append(received)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status_override is not None:
            received.status = self.status_override
            return web.json_response({"error": "injected"}, status=self.status_override)
        try:
            response = self._answer(request)
        except web.HTTPException as redirect:
            received.status = redirect.status
            raise
        received.status = response.status
        # What a careless proxy would pass on: the upstream's own CORS headers and cookies.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Set-Cookie"] = "ph_upstream=1; Path=/"
        response.headers["X-Upstream"] = "fake-posthog"
        return response

    def _answer(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/batch/", "/s/", "/e/", "/i/v0/e/", "/capture/", "/track/", "/engage/"):
            return web.json_response({"status": "Ok"})
        if self.redirect_flags and path.rstrip("/") in ("/flags", "/decide"):
            raise web.HTTPPermanentRedirect("/flags/?v=2")  # like a trailing-slash-normalising proxy
        if path.rstrip("/") == "/flags/definitions" and request.query.get("token") in self.flag_definitions:
            return self._asset(request, orjson.dumps(self.flag_definitions[request.query["token"]]), "application/json")
        if path.rstrip("/") in ("/flags", "/decide"):
            version = int(request.query.get("v", "1"))
            legacy = (path.startswith("/decide") and version < 4) or (path.startswith("/flags") and version < 2)
            return web.json_response(FLAGS_V1 if legacy else FLAGS_V2)
        if path == "/static/moved.js":
            raise web.HTTPFound("/static/array.js")
        if path == "/static/array.js":
            return self._asset(request, ARRAY_JS, "application/javascript")
        if path == "/static/blob.bin":
            return self._asset(request, BINARY, "application/octet-stream")
        if path == "/static/gz.js":
            return self._asset(request, GZIP_JS, "application/javascript", compress=True)
        if path.startswith("/array/") and path.endswith("/config"):
            config = orjson.dumps({"token": path.split("/")[2], "supportedCompression": ["gzip", "gzip-js"]})
            return self._asset(request, config, "application/json")
        if path == "/":
            return web.Response(text="capture")
        return web.json_response({"path": request.raw_path, "method": request.method})

    def _asset(self, request: web.Request, body: bytes, content_type: str, compress: bool = False) -> web.Response:
        etag = etag_of(body)
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={self.asset_max_age}", "Vary": "Accept-Encoding"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        if compress and "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            body = gzip.compress(body, mtime=0)
        return web.Response(body=body, headers=headers, content_type=content_type)
