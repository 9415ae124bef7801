"""Capture's refusals of a request PostHog capture would reject, in PostHog's error codes."""

from __future__ import annotations

from gateway.core.errors import GatewayError


class EmptyPayload(GatewayError):
    code = "empty_payload"


class RequestDecodingError(GatewayError):
    code = "request_decoding_error"


class RequestParsingError(GatewayError):
    code = "request_parsing_error"


class RequestHydrationError(GatewayError):
    code = "request_hydration_error"


class EmptyBatch(GatewayError):
    code = "empty_batch"


class MissingEventName(GatewayError):
    code = "missing_event_name"


class MissingDistinctId(GatewayError):
    code = "missing_distinct_id"


class InvalidCookielessMode(GatewayError):
    code = "invalid_cookieless_mode"


class MissingSessionId(GatewayError):
    code = "missing_session_id"


class InvalidSessionId(GatewayError):
    code = "invalid_session_id"


class MissingSnapshotData(GatewayError):
    code = "missing_snapshot_data"


class NoToken(GatewayError):
    status = 401
    code = "ingest_key_required"


class InvalidToken(GatewayError):
    status = 403
    code = "ingest_key_unknown"


class MultipleTokens(GatewayError):
    code = "unroutable_events"
