"""Path aliases against ad-blocker path lists: a neutral public path (and everything under it) serves a
real route, e.g. `/k7q=/e` makes `/k7q/` capture events and `/x9=/static` serve `/static/array.js` at
`/x9/array.js`. Handlers, and the upstream in proxy mode, only ever see the real path. A `--prefix`
(another mount point of every route) is left to the handlers, which forward PostHog's path without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PathAlias:
    alias: str
    target: str

    @classmethod
    def parse(cls, entry: str) -> PathAlias:
        """`ALIAS=PATH`; raises ValueError for anything else."""
        alias, sep, target = (part.strip() for part in entry.partition("="))
        for path in (alias, target):
            if not sep or not path.startswith("/") or path.endswith("/") or "{" in path or "?" in path:
                raise ValueError(f"invalid path alias {entry!r} (expected /alias=/path, no trailing /)")
        if alias == target:
            raise ValueError(f"path alias {entry!r} maps a path to itself")
        return cls(alias, target)

    def rewrite(self, raw_path: str) -> str:
        """The real path (and query) of a request received under the alias."""
        return self.target + raw_path[len(self.alias) :]


def unprefixed(raw_path: str, prefix: str) -> str:
    """`raw_path` (path and query) of a route registered under `--prefix` `prefix`, as the upstream serves it."""
    return raw_path[len(prefix) :] if prefix and raw_path.startswith(prefix + "/") else raw_path


def parse_aliases(entries: Iterable[str]) -> tuple[PathAlias, ...]:
    aliases = tuple(PathAlias.parse(entry) for entry in entries)
    names = [alias.alias for alias in aliases]
    if len(set(names)) != len(names):
        raise ValueError("each alias may be given once")
    return aliases


def aliased_paths(path: str, aliases: Iterable[PathAlias]) -> Iterator[tuple[str, PathAlias]]:
    """Each alias route pattern for a registered route pattern, with the alias that produced it."""
    for alias in aliases:
        if path == alias.target or path.startswith(alias.target + "/"):
            yield alias.alias + path[len(alias.target) :], alias
