"""The error contract of every layer: each error knows its HTTP status, PostHog error code and, when
the client should come back, its Retry-After. `gateway.http.responses.error_response` renders them.

The concrete kinds live where they arise (capture/errors.py, edge/errors.py, sinks); here are the base
and the kinds raised by more than one layer.
"""

from __future__ import annotations


class GatewayError(Exception):
    """A request the gateway refuses. `code` is PostHog's machine-readable error code."""

    status: int = 400
    code: str = "request_parsing_error"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after  # seconds; sent as Retry-After when set

    def body(self) -> dict[str, object]:
        return {"status": self.status, "code": self.code, "error": self.message}


class PayloadTooLarge(GatewayError):
    """A body, a decompressed payload or a record over its limit."""

    status = 413
    code = "payload_too_large"


class ServiceUnavailable(GatewayError):
    """The gateway cannot store the events right now; clients should retry after `retry_after` seconds."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, retry_after)
