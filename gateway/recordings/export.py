"""A session's rrweb events in playback order, as one JSON array (what rrweb's Replayer takes)."""

from __future__ import annotations

import gzip
import zlib
from typing import IO, Any

import orjson

from gateway.recordings.blocks import decode_block
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.storage import BlockStore

# posthog-js (recorder v2) gzips the bulky parts of some events and marks them `"cv": "2024-10"`; PostHog's
# own player inflates them before rrweb sees them, and so does the export. A full snapshot's whole `data`,
# or these fields of an incremental snapshot (by source: mutation, style sheet rule), may be a gzip string
# (its bytes as latin-1 code points).
FULL_SNAPSHOT, INCREMENTAL_SNAPSHOT = 2, 3
COMPRESSED_FIELDS = {0: ("adds", "removes", "texts", "attributes"), 8: ("adds", "removes")}


class SessionNotFound(LookupError):
    pass


def playable(event: dict[str, Any]) -> dict[str, Any]:
    """The event as rrweb expects it: posthog-js' compressed fields inflated, the `cv` marker dropped."""
    if event.get("cv") != "2024-10":
        return event
    event = {key: value for key, value in event.items() if key != "cv"}
    data = event.get("data")
    if event.get("type") == FULL_SNAPSHOT and isinstance(data, str):
        event["data"] = _inflate(data)
    elif event.get("type") == INCREMENTAL_SNAPSHOT and isinstance(data, dict):
        fields = COMPRESSED_FIELDS.get(data.get("source"), ())  # type: ignore[arg-type]
        event["data"] = {key: _inflate(value) if key in fields and isinstance(value, str) else value
                         for key, value in data.items()}
    return event


def _inflate(text: str) -> Any:
    """The JSON value gzipped in `text`, or `text` itself when it is not one (the player then skips it)."""
    try:
        return orjson.loads(gzip.decompress(text.encode("latin-1")))
    except (OSError, EOFError, zlib.error, UnicodeEncodeError, orjson.JSONDecodeError):
        return text


async def write_session(events: ReplayEvents, store: BlockStore, session_id: str, out: IO[bytes]) -> int:
    """Stream the session's events block by block (one block in memory at a time); returns the count."""
    keys = await events.session_blocks(session_id)
    if not keys:
        raise SessionNotFound(f"no recording of session {session_id!r}")
    count = 0
    out.write(b"[")
    for key in keys:
        for _, event in decode_block(await store.get(key)):
            out.write((b",\n" if count else b"\n") + orjson.dumps(playable(event)))
            count += 1
    out.write(b"\n]\n")
    out.flush()
    return count
