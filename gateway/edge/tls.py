"""Server TLS for serving HTTPS directly: TLS 1.2 and 1.3 only, forward-secret AEAD ciphers only.

TLS 1.3 suites are OpenSSL's (all AEAD); for TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305
is offered (Mozilla's "intermediate" profile without DHE): no CBC, no RSA key exchange, no SHA-1.

`reload_certificate` loads a new chain into the running context (SIGHUP): OpenSSL copies the
context's certificate into each connection when its handshake starts, so new connections get the
new certificate and established ones keep theirs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


def server_ssl_context(cert: Path, key: Path | None) -> ssl.SSLContext:
    """An SSL context for a listener, from a PEM certificate chain and its private key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert, key)
    return context


def reload_certificate(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Use a new certificate chain and key for new handshakes (raises ssl.SSLError/OSError if unusable).

    Validated in a scratch context first, so a bad pair never reaches the running one."""
    server_ssl_context(cert, key)
    context.load_cert_chain(cert, key)
