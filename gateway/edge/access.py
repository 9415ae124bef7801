"""Who may reach management endpoints (/metrics): clients in allowed CIDRs, or holders of a bearer token.

The client address is the resolved client IP (`ClientIpResolver`), not the socket peer, so a
load balancer inside an allowed range does not open /metrics to everyone behind it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web

from gateway.edge.client_ip import ClientIpResolver, network_matcher, parse_networks


class AdminAccess:
    def __init__(self, client_ip: ClientIpResolver, cidrs: Iterable[str], token: str | None = None) -> None:
        self.client_ip = client_ip
        networks = parse_networks(cidrs)
        self.in_networks = network_matcher(networks) if networks else None
        self.expected = f"Bearer {token}".encode() if token else None

    def allows(self, request: web.BaseRequest) -> bool:
        if self.in_networks is not None and self.in_networks(self.client_ip(request)):
            return True
        presented = request.headers.get("Authorization")
        return bool(self.expected and presented) and hmac.compare_digest(presented.encode(), self.expected)
