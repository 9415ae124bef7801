"""Security headers on every answer of the gateway (its own JSON, not anything it forwards)."""

from __future__ import annotations


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
