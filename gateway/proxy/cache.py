"""A bounded in-memory LRU cache (bytes budget) of upstream answers, following Cache-Control and ETag.

Only what a shared cache may keep is stored (no `no-store`/`private`); freshness is `s-maxage` or
`max-age`. Past it, an entry is served while revalidated in the background within
`stale-while-revalidate`, and served instead of an error within `stale-if-error` (default one day),
so the SDK keeps loading while the upstream is down. Bodies are kept exactly as received.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.metrics import serve as metrics

DEFAULT_STALE_IF_ERROR = 86_400.0
# An entry may use at most this share of the budget, so one large file cannot flush everything else.
MAX_ENTRY_SHARE = 0.25


def cache_control(value: str) -> dict[str, str]:
    """`max-age=60, public` → {"max-age": "60", "public": ""} (directive names lowercased)."""
    directives = {}
    for part in value.split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            directives[name.lower()] = argument.strip().strip('"')
    return directives


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Freshness:
    max_age: float
    stale_while_revalidate: float
    stale_if_error: float

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Freshness | None:
        """None when a shared cache must not store the answer."""
        directives = cache_control(headers.get("Cache-Control", ""))
        if "no-store" in directives or "private" in directives:
            return None
        max_age = _seconds(directives.get("s-maxage")) or _seconds(directives.get("max-age")) or 0.0
        if "no-cache" in directives:
            max_age = 0.0
        return cls(
            max_age=max_age,
            stale_while_revalidate=_seconds(directives.get("stale-while-revalidate")) or 0.0,
            stale_if_error=_seconds(directives.get("stale-if-error")) or DEFAULT_STALE_IF_ERROR,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    headers: CIMultiDict[str]
    body: bytes
    stored_at: float
    freshness: Freshness

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag")

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items())

    def fresh(self, now: float) -> bool:
        return now - self.stored_at < self.freshness.max_age

    def revalidate_in_background(self, now: float) -> bool:
        return now - self.stored_at < self.freshness.max_age + self.freshness.stale_while_revalidate

    def usable_on_error(self, now: float) -> bool:
        return now - self.stored_at < self.freshness.max_age + self.freshness.stale_if_error

    def refreshed(self, not_modified: Mapping[str, str], now: float) -> Entry:
        """This entry after a 304: the 304's validators and Cache-Control replace the stored ones."""
        headers = self.headers.copy()
        for name in ("Cache-Control", "ETag", "Expires", "Last-Modified"):
            if name in not_modified:
                headers[name] = not_modified[name]
        return Entry(headers, self.body, now, Freshness.of(headers) or self.freshness)


def etag_matches(if_none_match: str, etag: str | None) -> bool:
    """Weak comparison (RFC 9110 §13.1.2), as If-None-Match requires."""
    if etag is None:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


class ResponseCache:
    """LRU by bytes: a `get` refreshes recency; a `put` evicts the least recently used entries."""

    def __init__(self, budget: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self.used = 0
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, str], entry: Entry) -> None:
        self._remove(key)
        if entry.size > self.budget * MAX_ENTRY_SHARE:
            return
        self._entries[key] = entry
        self.used += entry.size
        while self.used > self.budget:
            self._remove(next(iter(self._entries)))
        metrics.PROXY_CACHE_BYTES.set(self.used)

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used -= entry.size
