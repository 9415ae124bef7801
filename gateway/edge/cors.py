"""CORS as PostHog capture answers it: mirror an allowed Origin and the requested headers, with credentials.

Browsers send beacons with credentials, so a wildcard `*` origin would fail them; mirroring is required.
By default every origin is mirrored (PostHog's behaviour); with an allowlist, other origins get no
CORS headers at all, so the browser refuses to expose the answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from functools import lru_cache

from aiohttp import web

_METHOD_ORDER = ("GET", "HEAD", "POST")  # the usual ones first, any other alphabetically, OPTIONS last
MAX_ALLOW_HEADERS_LENGTH = 2048
PREFLIGHT_MAX_AGE = "86400"
PREFLIGHT_BODY = b'{"status":"Ok"}'
# Header names only (RFC 9110 tokens) separated by commas: nothing else is echoed back.
_HEADER_LIST = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*$")


@lru_cache(maxsize=64)
def allow_methods(methods: frozenset[str]) -> str:
    """A route's methods as Access-Control-Allow-Methods: what `--route-methods` lets through, and OPTIONS."""
    rank = {method: index for index, method in enumerate(_METHOD_ORDER)}
    ordered = sorted(methods - {"OPTIONS"}, key=lambda method: (rank.get(method, len(rank)), method))
    return ", ".join([*ordered, "OPTIONS"])


def origin_matcher(patterns: Iterable[str]):
    """`origin → allowed?` for exact origins (`https://app.example.com`) and host wildcards.

    `*.example.com` allows any subdomain on any scheme; `https://*.example.com` only over https.
    Neither allows the bare `example.com`. No patterns: every origin is allowed.
    """
    exact: set[str] = set()
    wildcards: list[tuple[str, str]] = []  # (scheme or "", ".example.com")
    for pattern in patterns:
        pattern = pattern.strip().rstrip("/").lower()
        scheme, _, host = pattern.rpartition("://")
        if host.startswith("*."):
            wildcards.append((scheme, host[1:]))
        elif scheme:
            exact.add(pattern)
        else:
            raise ValueError(f"CORS origin {pattern!r} needs a scheme (https://…) or a *. wildcard")
    if not exact and not wildcards:
        return None

    @lru_cache(maxsize=4096)
    def allowed(origin: str) -> bool:
        origin = origin.lower()
        if origin in exact:
            return True
        scheme, _, host = origin.partition("://")
        host = host.split(":", 1)[0]
        return any(host.endswith(suffix) and (not want or want == scheme) for want, suffix in wildcards)

    return allowed


class CorsPolicy:
    """Adds CORS headers to answers for allowed origins and answers preflights locally."""

    def __init__(self, origins: Iterable[str] = ()) -> None:
        self.allowed = origin_matcher(origins)

    def apply(self, request: web.BaseRequest, headers: MutableMapping[str, str]) -> bool:
        """Mirror the Origin when it is allowed; returns whether it was. Every answer varies by Origin (a
        shared cache must not serve a copy made for another origin, or for none), and keeps the Vary it
        had (a proxied asset's `Accept-Encoding`)."""
        vary = headers.get("Vary")
        if not vary:
            headers["Vary"] = "Origin"
        elif "origin" not in (name.strip().lower() for name in vary.split(",")):
            headers["Vary"] = f"{vary}, Origin"
        origin = request.headers.get("Origin")
        if not origin or (self.allowed is not None and not self.allowed(origin)):
            return False
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Expose-Headers"] = "Retry-After"
        return True

    def preflight(self, request: web.BaseRequest, methods: frozenset[str]) -> web.Response:
        """The answer to an OPTIONS on a route that accepts `methods`."""
        response = web.Response(status=200, body=PREFLIGHT_BODY, content_type="application/json")
        if self.apply(request, response.headers):
            response.headers["Access-Control-Allow-Methods"] = allow_methods(methods)
            requested = request.headers.get("Access-Control-Request-Headers", "")
            if len(requested) <= MAX_ALLOW_HEADERS_LENGTH and _HEADER_LIST.match(requested):
                response.headers["Access-Control-Allow-Headers"] = requested
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return response
