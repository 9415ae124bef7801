"""Thin aiohttp handlers for PostHog's capture routes: read → decode → parse → records → sink."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson
from aiohttp import web

from gateway import metrics
from gateway.capture.check_event import CheckEvents
from gateway.capture.decode import DecodeLimits, decode_payload, is_legacy_path
from gateway.capture.events import RecordOptions, RequestContext, analytics_records, replay_record
from gateway.capture.parse import parse_request
from gateway.capture.timestamps import sent_at_from_query
from gateway.core.errors import GatewayError, PayloadTooLarge
from gateway.core.record import Record
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.errors import BodyReadTimeout
from gateway.edge.tokens import TokenPolicy
from gateway.metrics_export import LocalCounter, LocalHistogram
from gateway.privacy.policy import PrivacyPolicy
from gateway.sinks.base import Sink

log = logging.getLogger("gateway.capture")
OK_BODY = b'{"status":"Ok"}'
# Bodies above this are decoded and parsed in a worker thread so the event loop keeps serving.
OFFLOAD_THRESHOLD = 256 * 1024


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A capture route family: its paths, body limit and whether it carries replay snapshots."""

    name: str
    paths: tuple[str, ...]
    body_limit: int
    replay: bool = False


class CaptureHandler:
    def __init__(
        self,
        sink: Sink,
        limits: DecodeLimits,
        options: RecordOptions,
        client_ip: ClientIpResolver,
        tokens: TokenPolicy,
        body_read_timeout: float,
        clock: Callable[[], datetime],
        privacy: PrivacyPolicy | None = None,
    ) -> None:
        self.sink = sink
        self.limits = limits
        self.options = options
        self.client_ip = client_ip
        self.tokens = tokens
        self.body_read_timeout = body_read_timeout
        self.clock = clock
        self.privacy = privacy
        self.checks = CheckEvents(sink.readiness, metrics.EVENTS_DROPPED.labels("gateway_check"))

    def handler_for(self, spec: RouteSpec) -> Callable[[web.Request], object]:
        # Counted locally, folded into the exported metrics about once a second (gateway/metrics_export.py).
        answered = {
            200: LocalCounter(metrics.HTTP_REQUESTS.labels(spec.name, "200")),
            204: LocalCounter(metrics.HTTP_REQUESTS.labels(spec.name, "204")),
        }
        latency = LocalHistogram(metrics.HTTP_LATENCY.labels(spec.name))
        received = LocalCounter(metrics.EVENTS_RECEIVED.labels(spec.name))
        ingested = LocalCounter(metrics.EVENTS_INGESTED.labels(spec.name))
        size = LocalHistogram(metrics.REQUEST_SIZE.labels(spec.name))
        batch_size = LocalHistogram(metrics.EVENT_BATCH_SIZE.labels(spec.name))

        async def handle(request: web.Request) -> web.StreamResponse:
            # Methods, OPTIONS, CORS and client-IP limits are the edge policy's (gateway.edge.policy).
            started = time.perf_counter()
            try:
                body = await read_body(request, spec.body_limit, self.body_read_timeout)
                size.observe(len(body))
                records = await self._records(request, spec, body)
                if records:
                    received.inc(len(records))
                    batch_size.observe(len(records))
                    await self.sink.deliver(records)
                    ingested.inc(len(records))
            except GatewayError as error:
                return error_response(request, spec.name, error)
            response = success_response(request)
            answered[response.status].inc()
            latency.observe(time.perf_counter() - started)
            return response

        return handle

    async def _records(self, request: web.Request, spec: RouteSpec, body: bytes) -> list[Record]:
        context = RequestContext(
            client_ip=self.client_ip(request),
            now=self.clock(),
            user_agent=request.headers.get("User-Agent", ""),
        )
        args = (
            body,
            request.query,
            request.content_type,
            request.headers.get("Content-Encoding", ""),
            request.path,
            spec,
            context,
            self.privacy is not None and self.privacy.opted_out(request.headers),
        )
        if len(body) > OFFLOAD_THRESHOLD:
            return await asyncio.to_thread(self._process, *args)
        return self._process(*args)

    def _process(
        self,
        body: bytes,
        query: object,
        content_type: str,
        content_encoding: str,
        path: str,
        spec: RouteSpec,
        context: RequestContext,
        opted_out: bool = False,
    ) -> list[Record]:
        payload = decode_payload(
            body, query, content_type, content_encoding, is_legacy_path(path), self.limits
        )
        parsed = parse_request(
            payload,
            engage=path.rstrip("/").endswith("/engage"),
            query_sent_at=sent_at_from_query(query.get("_") or query.get("sent_at")),
        )
        if parsed is None:
            metrics.EVENTS_DROPPED.labels("performance_event").inc()
            return []
        parsed = self.tokens.apply(spec.name, parsed)
        if parsed is None:
            return []
        if self.privacy is not None:  # data minimisation: before any record exists (gateway/privacy)
            parsed, context = self.privacy.apply(parsed, context, spec.replay, opted_out)
            if parsed is None:
                return []
        if spec.replay:
            return [replay_record(parsed, context, self.options)]
        return self.checks.remove(parsed.events, analytics_records(parsed, context, self.options))


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """Read at most `limit` bytes within `timeout` seconds; larger bodies are refused unbuffered."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    if request.content.is_eof():  # already received with the headers: no wait, no timer
        return await request.read()
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
