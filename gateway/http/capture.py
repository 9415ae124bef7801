"""Thin aiohttp handlers for PostHog's capture routes: read → decode → parse → records → sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import orjson
from aiohttp import web

from gateway.capture.check_event import CHECK_EVENT, CheckEvents
from gateway.capture.decode import DecodeLimits, decode_payload, is_legacy_path
from gateway.capture.events import (
    RecordOptions,
    RequestContext,
    analytics_records,
    check_events,
    replay_record,
)
from gateway.capture.parse import ParsedRequest, parse_request
from gateway.capture.spooled import request_content
from gateway.capture.timestamps import sent_at_from_query
from gateway.core.errors import GatewayError
from gateway.core.record import Record
from gateway.edge.aliases import unprefixed
from gateway.edge.client_ip import ClientIpResolver
from gateway.edge.tokens import TokenPolicy
from gateway.http.responses import error_response, read_body, success_response
from gateway.metrics import serve as metrics
from gateway.metrics.export import LocalCounter, LocalHistogram
from gateway.privacy.policy import PrivacyPolicy
from gateway.sinks.base import Sink
from gateway.sinks.spool import SpoolSink
from gateway.sinks.upstream import ReceivedRequest, UpstreamSink, received_post
from gateway.spool import layout

# Bodies above this are decoded and parsed in a worker thread so the event loop keeps serving.
OFFLOAD_THRESHOLD = 256 * 1024


@dataclass(frozen=True, slots=True)
class SpooledRequest:
    """A request whose records the spool reader builds (gateway/capture/spooled.py)."""

    content: bytes
    records: int

    def __len__(self) -> int:
        return self.records


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
        forward_as_received: bool = False,
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
        # Embedded mode: the spool holds each analytics request as one frame, and its readers build the
        # records; with Kafka or an upstream the records are built here.
        self.request_spool = sink if isinstance(sink, SpoolSink) and sink.kind == layout.MAIN else None
        # Forward mode, `--upstream-forward-as-received`: a request the edge leaves unchanged goes to the
        # upstream as received. Never with privacy rules or historical rerouting, which may change events.
        self.as_received = (
            forward_as_received and isinstance(sink, UpstreamSink) and privacy is None
            and options.upstream and options.historical_rerouting_after is None
        )

    def handler_for(self, spec: RouteSpec, prefix: str = "") -> Callable[[web.Request], object]:
        """The handler of `spec` registered under `prefix`."""
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
                records = await self._records(request, spec, body, prefix)
                if records:
                    received.inc(len(records))
                    batch_size.observe(len(records))
                    if isinstance(records, SpooledRequest):
                        assert self.request_spool is not None
                        await self.request_spool.deliver_request(records.content, records.records)
                    else:  # records, or a ReceivedRequest for the UpstreamSink
                        await self.sink.deliver(records)  # type: ignore[arg-type]
                    ingested.inc(len(records))
            except GatewayError as error:
                return error_response(request, spec.name, error)
            response = success_response(request)
            answered[response.status].inc()
            latency.observe(time.perf_counter() - started)
            return response

        return handle

    async def _records(
        self, request: web.Request, spec: RouteSpec, body: bytes, prefix: str
    ) -> list[Record] | SpooledRequest | ReceivedRequest:
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
            unprefixed(request.path, prefix),  # PostHog's route: legacy unwrap and /engage depend on it
            spec,
            context,
            self.privacy is not None and self.privacy.opted_out(request.headers),
        )
        if len(body) > OFFLOAD_THRESHOLD:
            records = await asyncio.to_thread(self._process, *args)
        else:
            records = self._process(*args)
        if type(records) is ParsedRequest:  # unchanged by the edge: forwarded as received
            path = unprefixed(request.raw_path, prefix)
            return ReceivedRequest(
                received_post(path, request.headers, context.client_ip, body, len(records.events)),
                partial(analytics_records, records, context, self.options),
            )
        return records

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
    ) -> list[Record] | SpooledRequest | ParsedRequest:
        """The request's records, or with `as_received` the parsed request when the edge changed nothing."""
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
        events = len(parsed.events)
        parsed = self.tokens.apply(spec.name, parsed)
        if parsed is None:
            return []
        if self.privacy is not None:  # data minimisation: before any record exists (gateway/privacy)
            parsed, context = self.privacy.apply(parsed, context, spec.replay, opted_out)
            if parsed is None:
                return []
        if spec.replay:
            return [replay_record(parsed, context, self.options)]
        if self.request_spool is not None:
            return self._spooled(parsed, context)
        if self.as_received and len(parsed.events) == events and self._unchanged(parsed):
            return parsed
        return self.checks.remove(parsed.events, analytics_records(parsed, context, self.options))

    def _unchanged(self, parsed: ParsedRequest) -> bool:
        """Valid (what `analytics_records` would refuse raises here), every uuid sent by the client, no
        check event to drop: the upstream gets from the original body what the records would give it."""
        return check_events(parsed) and all(event["event"] != CHECK_EVENT for event in parsed.events)

    def _spooled(self, parsed: ParsedRequest, context: RequestContext) -> SpooledRequest | list[Record]:
        """The request for the spool to hold whole, or its records when its events cannot be written as
        one JSON array (nesting at orjson's limit)."""
        check_events(parsed)  # every event, check events too, as analytics_records does
        events = self.checks.remove_events(parsed.events)
        if not events:
            return []
        if events is not parsed.events:
            parsed = ParsedRequest(events, parsed.token, parsed.sent_at, parsed.historical_migration)
        try:
            return SpooledRequest(request_content(parsed, context, self.options), len(events))
        except orjson.JSONEncodeError:
            return analytics_records(parsed, context, self.options)
