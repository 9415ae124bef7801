"""Thin aiohttp handlers for PostHog's capture routes: read → decode → parse → records → sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from gateway.capture.check_event import CheckEvents
from gateway.capture.decode import DecodeLimits, decode_payload, is_legacy_path
from gateway.capture.events import RecordOptions, RequestContext, analytics_records, replay_record
from gateway.capture.parse import parse_request
from gateway.capture.timestamps import sent_at_from_query
from gateway.core.errors import GatewayError
from gateway.core.record import Record
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.tokens import TokenPolicy
from gateway.http.responses import error_response, read_body, success_response
from gateway.metrics import serve as metrics
from gateway.metrics.export import LocalCounter, LocalHistogram
from gateway.privacy.policy import PrivacyPolicy
from gateway.sinks.base import Sink

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
        # Counted locally, folded into the exported metrics about once a second (gateway/metrics/export.py).
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
