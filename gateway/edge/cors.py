"""CORS as PostHog capture answers it: mirror the Origin and requested headers, with credentials.

Browsers send beacons with credentials, so a wildcard origin would fail them; mirroring is required.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from aiohttp import web

ALLOW_METHODS = "GET, POST, OPTIONS"
MAX_ALLOW_HEADERS_LENGTH = 2048
PREFLIGHT_MAX_AGE = "86400"


def add_cors_headers(request: web.BaseRequest, headers: MutableMapping[str, str]) -> None:
    origin = request.headers.get("Origin")
    if not origin:
        return
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Expose-Headers"] = "Retry-After"
    headers["Vary"] = "Origin"


def preflight_response(request: web.BaseRequest) -> web.Response:
    response = web.Response(status=200, body=b'{"status":"Ok"}', content_type="application/json")
    add_cors_headers(request, response.headers)
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    requested = request.headers.get("Access-Control-Request-Headers")
    if requested and len(requested) <= MAX_ALLOW_HEADERS_LENGTH:
        response.headers["Access-Control-Allow-Headers"] = requested
    response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return response
