"""Property denylist: exact names and shell-style globs (`email`, `$ip`, `*_token`) removed from events.

Applied to `properties`, `$set` and `$set_once` (top level and nested in `properties`). Keys that
capture itself needs to route an event (distinct_id, token, session and window ids) are never removed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

PROTECTED = frozenset({"distinct_id", "token", "$session_id", "$window_id", "$snapshot_data"})
PERSON_KEYS = ("$set", "$set_once")
_GLOB_CHARS = frozenset("*?[")
_CACHE_LIMIT = 8192


class PropertyDenylist:
    """Removes denied keys from property dicts; `remove` returns how many it removed."""

    def __init__(self, patterns: Iterable[str]) -> None:
        names = [p.strip() for p in patterns if p.strip()]
        self.exact = frozenset(n for n in names if not _GLOB_CHARS & set(n)) - PROTECTED
        globs = [n for n in names if _GLOB_CHARS & set(n)]
        self._glob = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
        self._glob_cache: dict[str, bool] = {}  # property names repeat: match each once

    def __bool__(self) -> bool:
        return bool(self.exact) or self._glob is not None

    def _denied(self, key: str) -> bool:
        denied = self._glob_cache.get(key)
        if denied is None:
            if len(self._glob_cache) >= _CACHE_LIMIT:
                self._glob_cache.clear()
            denied = key not in PROTECTED and self._glob is not None and self._glob.match(key) is not None
            self._glob_cache[key] = denied
        return denied

    def remove(self, properties: dict[str, Any]) -> int:
        """Delete denied keys from one dict in place."""
        removed = 0
        if self.exact:
            for name in self.exact:
                if properties.pop(name, _MISSING) is not _MISSING:
                    removed += 1
        if self._glob is not None:
            denied = [key for key in properties if self._denied(key)]
            for key in denied:
                del properties[key]
            removed += len(denied)
        return removed

    def apply(self, event: dict[str, Any]) -> int:
        """Remove denied keys from an event's properties and person property updates."""
        properties = event["properties"]
        removed = self.remove(properties)
        for holder in (event, properties):
            for key in PERSON_KEYS:
                values = holder.get(key)
                if isinstance(values, dict):
                    removed += self.remove(values)
        return removed


_MISSING = object()
