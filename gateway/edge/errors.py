"""Edge-policy rejections in PostHog's error shape; `error_response` turns them into HTTP like any other."""

from __future__ import annotations

from gateway.core.errors import GatewayError, ServiceUnavailable


class RouteNotFound(GatewayError):
    status = 404
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class RateLimited(GatewayError):
    """A client IP or token is over its rate. Browsers drop 429s; server SDKs retry after Retry-After."""

    status = 429
    code = "rate_limited"


class Overloaded(ServiceUnavailable):
    """The gateway itself is at its in-flight bound: 503 so that every client retries later."""

    code = "overloaded"
