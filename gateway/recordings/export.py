"""A session's rrweb events in playback order, as one JSON array (what rrweb's Replayer takes)."""

from __future__ import annotations

from typing import IO

import orjson

from gateway.recordings.blocks import decode_block
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.storage import BlockStore


class SessionNotFound(LookupError):
    pass


async def write_session(events: ReplayEvents, store: BlockStore, session_id: str, out: IO[bytes]) -> int:
    """Stream the session's events block by block (one block in memory at a time); returns the count."""
    keys = await events.session_blocks(session_id)
    if not keys:
        raise SessionNotFound(f"no recording of session {session_id!r}")
    count = 0
    out.write(b"[")
    for key in keys:
        for _, event in decode_block(await store.get(key)):
            out.write((b",\n" if count else b"\n") + orjson.dumps(event))
            count += 1
    out.write(b"\n]\n")
    out.flush()
    return count
