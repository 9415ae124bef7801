"""Security headers on every answer of the gateway (its own JSON, not anything it forwards)."""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE


def security_headers(
    *, tls: bool, hsts_max_age: int, content_security_policy: str
) -> tuple[tuple[str, str], ...]:
    """The fixed headers, computed once: nosniff, no referrer, CSP, and HSTS only when serving TLS.

    HSTS over plain HTTP is ignored by browsers and, behind a TLS-terminating proxy, is that proxy's job.
    """
    headers = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
    if content_security_policy:
        headers.append(("Content-Security-Policy", content_security_policy))
    if tls and hsts_max_age > 0:
        headers.append(("Strict-Transport-Security", f"max-age={hsts_max_age}; includeSubDomains"))
    return tuple(headers)


async def omit_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: drop aiohttp's default `Server: Python/3.x aiohttp/3.x` (version disclosure).

    Runs after aiohttp set its defaults and before the head is written; an upstream's own Server header
    (forwarded answers) is left as it is.
    """
    if response.headers.get(hdrs.SERVER) == SERVER_SOFTWARE:
        del response.headers[hdrs.SERVER]
