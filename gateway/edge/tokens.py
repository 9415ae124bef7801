"""Project-token policy applied to a parsed request: allowlist, drop list and per-token rate.

The drop list follows PostHog capture's token dropper (DROP_EVENTS_BY_TOKEN_DISTINCT_ID): an entry
`token` drops all of a project's events, `token:distinct_id` only that person's. Dropped events are
answered 200 like stored ones (so SDKs do not retry them) and counted as
`capture_events_dropped{cause="token_dropper"}`.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.capture.errors import InvalidToken
from gateway.capture.parse import ParsedRequest
from gateway.edge.errors import RateLimited
from gateway.edge.ratelimit import SlidingWindow
from gateway.metrics import serve as metrics


class TokenPolicy:
    def __init__(
        self,
        allow: Iterable[str] = (),
        drop: Iterable[str] = (),
        limits: dict[str, SlidingWindow] | None = None,
    ) -> None:
        self._dropped = metrics.EVENTS_DROPPED.labels("token_dropper")
        self.configure(allow, drop, limits)

    def configure(
        self, allow: Iterable[str], drop: Iterable[str], limits: dict[str, SlidingWindow] | None
    ) -> None:
        """(Re)load the lists and per-token windows (SIGHUP reload applies new ones in place)."""
        self.allow = frozenset(allow) or None
        self.drop_tokens: set[str] = set()
        self.drop_pairs: dict[str, set[str]] = {}
        for entry in drop:
            token, sep, distinct_id = entry.partition(":")
            if sep:
                self.drop_pairs.setdefault(token, set()).add(distinct_id)
            else:
                self.drop_tokens.add(token)
        self.limits = limits or {}

    def apply(self, route: str, parsed: ParsedRequest) -> ParsedRequest | None:
        """Refuse (403/429) or filter the request's events; None when every event was dropped."""
        token = parsed.token
        if self.allow is not None and token not in self.allow:
            raise InvalidToken("API key is not allowed on this gateway")
        if token in self.drop_tokens:
            self._dropped.inc(len(parsed.events))
            return None
        window = self.limits.get(route)
        if window is not None and (retry_after := window.hit(token)):
            metrics.RATE_LIMITED.labels(route, "token").inc()
            raise RateLimited("too many requests for this project", retry_after)
        dropped_ids = self.drop_pairs.get(token)
        if dropped_ids:
            kept = [e for e in parsed.events if str(e.get("distinct_id")) not in dropped_ids]
            if len(kept) < len(parsed.events):
                self._dropped.inc(len(parsed.events) - len(kept))
                if not kept:
                    return None
                parsed.events = kept
        return parsed
