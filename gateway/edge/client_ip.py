"""The client's IP: the socket peer, or the X-Forwarded-For entry added by the last trusted proxy."""

from __future__ import annotations

from aiohttp import web


def client_ip(request: web.BaseRequest, trusted_hops: int) -> str:
    """With N trusted proxies in front, the client is the N-th address from the right of XFF + peer.

    Entries further left were written by the client itself and are never trusted.
    """
    peer = request.remote or ""
    if trusted_hops <= 0:
        return peer
    forwarded = request.headers.get("X-Forwarded-For")
    if not forwarded:
        return peer
    chain = [part.strip() for part in forwarded.split(",") if part.strip()]
    chain.append(peer)
    return chain[max(0, len(chain) - 1 - trusted_hops)]
