"""Server TLS for serving HTTPS directly: TLS 1.2 or newer, the stdlib's secure defaults otherwise."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_ssl_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """An SSL context for a listener, from a PEM certificate chain and its private key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
