"""PostHog's answers and body reading, shared by the edge, every handler and gdpr: success, an error
(any GatewayError: status, code, Retry-After), and a body read with a size limit and a timeout."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web

from gateway.core.errors import GatewayError, PayloadTooLarge
from gateway.metrics import serve as metrics

log = logging.getLogger("gateway.capture")
OK_BODY = b'{"status":"Ok"}'


class BodyReadTimeout(GatewayError):
    """The client did not send its body in time; the connection is closed with the answer."""

    status = 408
    code = "body_read_timeout"


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """Read at most `limit` bytes within `timeout` seconds; larger bodies are refused unbuffered."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    content = request.content
    if content.is_eof():  # already received with the headers: no wait, no timer, no copy loop
        body = content.read_nowait()
        if len(body) > limit:  # a chunked body (no Content-Length) received whole
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        return body
    try:
        async with asyncio.timeout(timeout):
            return await _read_streamed(request, limit)
    except TimeoutError:
        raise BodyReadTimeout(f"request body not received within {timeout:g} s") from None


async def _read_streamed(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None:
        return await request.read()
    chunks = bytearray()
    async for chunk in request.content.iter_any():
        chunks += chunk
        if len(chunks) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    return bytes(chunks)


def success_response(request: web.Request) -> web.Response:
    if request.query.get("beacon") == "1":
        return web.Response(status=204)
    return web.Response(body=OK_BODY, content_type="application/json")


def error_response(request: web.Request, route: str, error: GatewayError) -> web.Response:
    response = web.Response(
        status=error.status, body=orjson.dumps(error.body()), content_type="application/json"
    )
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.status in (405, 408, 413):
        # The unread rest of the body would otherwise be parsed as the next request.
        response.force_close()
    metrics.HTTP_REQUESTS.labels(route, str(error.status)).inc()
    metrics.REQUEST_ERRORS.labels(error.code).inc()
    # Code only: messages can quote request contents. Rate-limited per code by gateway.logs.
    log.info("request refused", extra={"route": route, "status": error.status, "code": error.code,
                                       "rate_key": error.code})
    return response
