"""Token → team_id mapping.

The gateway has no Postgres: tokens map to team ids through an explicit map (JSON file or
`token=id,...`). Unknown tokens either get a stable derived id — `2**31 + crc32(token) % 2**31`,
so they never collide with mapped ids below 2**31 and stay the same across restarts and hosts —
or are rejected to the DLQ (`strict`).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import orjson

HASHED_TEAM_BASE = 2**31


class UnknownToken(Exception):
    """Raised in strict mode for a token absent from the map."""


class TeamResolver:
    """Resolves project tokens to team ids, caching derived ids."""

    def __init__(self, mapping: dict[str, int], strict: bool = False) -> None:
        self._ids = dict(mapping)
        self._strict = strict

    def team_id(self, token: str) -> int:
        """The mapped id, a stable hash-derived id, or UnknownToken when strict."""
        team = self._ids.get(token)
        if team is None:
            if self._strict:
                raise UnknownToken(token)
            team = self._ids[token] = HASHED_TEAM_BASE + zlib.crc32(token.encode()) % HASHED_TEAM_BASE
        return team


def parse_team_map(spec: str) -> dict[str, int]:
    """Read `token=id,token2=id2`, or a JSON object `{token: id}` from a file path or inline text."""
    spec = spec.strip()
    if not spec:
        return {}
    if not spec.startswith("{") and "=" not in spec:
        spec = Path(spec).read_text()
    if spec.lstrip().startswith("{"):
        return {str(token): int(team) for token, team in orjson.loads(spec).items()}
    pairs = (item.split("=", 1) for item in spec.split(",") if item.strip())
    return {token.strip(): int(team) for token, team in pairs}
