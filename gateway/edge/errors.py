"""Edge-policy rejections in PostHog's error shape; `error_response` turns them into HTTP like any other."""

from __future__ import annotations

from gateway.capture.errors import CaptureError, ServiceUnavailable


class RouteNotFound(CaptureError):
    status = 404
    code = "not_found"


class Forbidden(CaptureError):
    status = 403
    code = "forbidden"


class BodyReadTimeout(CaptureError):
    """The client did not send its body in time; the connection is closed with the answer."""

    status = 408
    code = "body_read_timeout"


class RateLimited(CaptureError):
    """A client IP or token is over its rate. Browsers drop 429s; server SDKs retry after Retry-After."""

    status = 429
    code = "rate_limited"


class Overloaded(ServiceUnavailable):
    """The gateway itself is at its in-flight bound: 503 so that every client retries later."""

    code = "overloaded"
