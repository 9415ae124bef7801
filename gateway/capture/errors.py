"""Typed capture errors; each knows its HTTP status and PostHog error code (one place for the map)."""

from __future__ import annotations


class CaptureError(Exception):
    """A request PostHog capture would reject. `code` is PostHog's machine-readable error code."""

    status: int = 400
    code: str = "request_parsing_error"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after  # seconds; sent as Retry-After when set

    def body(self) -> dict[str, object]:
        return {"status": self.status, "code": self.code, "error": self.message}


class EmptyPayload(CaptureError):
    code = "empty_payload"


class RequestDecodingError(CaptureError):
    code = "request_decoding_error"


class RequestParsingError(CaptureError):
    code = "request_parsing_error"


class RequestHydrationError(CaptureError):
    code = "request_hydration_error"


class EmptyBatch(CaptureError):
    code = "empty_batch"


class MissingEventName(CaptureError):
    code = "missing_event_name"


class MissingDistinctId(CaptureError):
    code = "missing_distinct_id"


class InvalidCookielessMode(CaptureError):
    code = "invalid_cookieless_mode"


class MissingSessionId(CaptureError):
    code = "missing_session_id"


class InvalidSessionId(CaptureError):
    code = "invalid_session_id"


class MissingSnapshotData(CaptureError):
    code = "missing_snapshot_data"


class NoToken(CaptureError):
    status = 401
    code = "ingest_key_required"


class InvalidToken(CaptureError):
    status = 403
    code = "ingest_key_unknown"


class MultipleTokens(CaptureError):
    code = "unroutable_events"


class PayloadTooLarge(CaptureError):
    status = 413
    code = "payload_too_large"


class MethodNotAllowed(CaptureError):
    status = 405
    code = "method_not_allowed"


class ServiceUnavailable(CaptureError):
    """The gateway cannot store the events right now; clients should retry after `retry_after` seconds."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, retry_after)
