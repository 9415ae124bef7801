"""Blocks: one session's rrweb events from one partition, in order, as a compressed object.

A block's content is JSON lines `[window_id, event]` (PostHog's blob format), zstd-compressed. Its
key names the session and the first source offset it holds, so a block rebuilt after a crash (the
same first record, see `sink.py`) overwrites its earlier copy instead of duplicating it:

    sessions/<team_id>/<session_id>/<topic>-<partition>-<first_offset>.jsonl.zst

While lines are added, the block's `session_replay_events` figures are counted (PostHog's
definitions: clicks, key presses, mouse activity, console levels, active time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cramjam
import orjson

from gateway.recordings.items import EventData, RrwebEvent, SnapshotBatch

# rrweb event types and incremental-snapshot sources
FULL_SNAPSHOT, INCREMENTAL, META, PLUGIN = 2, 3, 4, 6
MOUSE_MOVE, MOUSE_INTERACTION, SCROLL, VIEWPORT_RESIZE, INPUT, TOUCH_MOVE, MEDIA, DRAG = 1, 2, 3, 4, 5, 6, 7, 12
COUNTED_TYPES = frozenset({INCREMENTAL, META, PLUGIN})  # the types whose data the figures read
CLICK_TYPES = frozenset({2, 4, 9})  # Click, DblClick, TouchEnd
MOUSE_ACTIVITY = frozenset({MOUSE_MOVE, MOUSE_INTERACTION, TOUCH_MOVE})
ACTIVE_SOURCES = frozenset({MOUSE_MOVE, MOUSE_INTERACTION, SCROLL, VIEWPORT_RESIZE, INPUT, TOUCH_MOVE, MEDIA, DRAG})
ACTIVITY_GAP_MS = 5000  # PostHog: activity closer than 5 s apart counts as continuous
CONSOLE_PLUGIN = "rrweb/console@1"
CONSOLE_LEVELS = {"log": "log", "info": "log", "debug": "log", "count": "log", "warn": "warn",
                  "error": "error", "assert": "error"}
SUFFIX = ".jsonl.zst"


def block_key(team_id: int, session_id: str, topic: str, partition: int, first_offset: int) -> str:
    return f"sessions/{team_id}/{session_id}/{topic}-{partition}-{first_offset:020d}{SUFFIX}"


def encode_block(chunks: list[bytes]) -> bytes:
    return bytes(cramjam.zstd.compress(b"".join(chunks), level=3))


def decode_block(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """[(window_id, event)] of a stored block, in order."""
    text = bytes(cramjam.zstd.decompress(data))
    return [tuple(orjson.loads(line)) for line in text.splitlines() if line]  # type: ignore[misc]


@dataclass(slots=True)
class BlockStats:
    """A block's `session_replay_events` figures."""

    first_timestamp: float = 0.0
    last_timestamp: float = 0.0
    first_url: str | None = None
    click_count: int = 0
    keypress_count: int = 0
    mouse_activity_count: int = 0
    console_log_count: int = 0
    console_warn_count: int = 0
    console_error_count: int = 0
    active_milliseconds: int = 0
    size: int = 0
    message_count: int = 0
    event_count: int = 0
    _last_active: float | None = None

    def add(self, events: list[RrwebEvent]) -> None:
        """Count rrweb events (already validated: integer `type`, positive numeric `timestamp`)."""
        first, last = self.first_timestamp, self.last_timestamp
        for event in events:
            timestamp = event.timestamp
            if timestamp < first or not first:
                first = timestamp
            if timestamp > last:
                last = timestamp
            kind = event.type
            if kind in COUNTED_TYPES and type(data := event.data) is EventData:
                self._count(kind, data, timestamp)
        self.first_timestamp, self.last_timestamp = first, last
        self.event_count += len(events)

    def _count(self, kind: int, data: EventData, timestamp: float) -> None:
        if kind == INCREMENTAL:
            source = data.source
            if type(source) is not int:
                return
            if source == MOUSE_INTERACTION and type(data.type) is int and data.type in CLICK_TYPES:
                self.click_count += 1
            elif source == INPUT:
                self.keypress_count += 1
            if source in MOUSE_ACTIVITY:
                self.mouse_activity_count += 1
            if source in ACTIVE_SOURCES:
                self._active_at(timestamp)
        elif kind == META:
            if self.first_url is None and isinstance(data.href, str):
                self.first_url = data.href
        elif data.plugin == CONSOLE_PLUGIN and data.payload:
            payload = orjson.loads(bytes(data.payload))
            level = payload.get("level") if isinstance(payload, dict) else None
            level = CONSOLE_LEVELS.get(level) if isinstance(level, str) else None
            if level is not None:
                name = f"console_{level}_count"
                setattr(self, name, getattr(self, name) + 1)

    def _active_at(self, timestamp: float) -> None:
        if self._last_active is not None and 0 <= timestamp - self._last_active <= ACTIVITY_GAP_MS:
            self.active_milliseconds += int(timestamp - self._last_active)
        self._last_active = timestamp


@dataclass(slots=True)
class SessionBuffer:
    """The events of one session from one partition not yet stored: the next block."""

    team_id: int
    session_id: str
    distinct_id: str
    token: str
    source: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int = -1
    chunks: list[bytes] = field(default_factory=list)  # JSON lines, one chunk per message
    stats: BlockStats = field(default_factory=BlockStats)
    started: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return self.stats.size

    def add(self, offset: int, batch: SnapshotBatch) -> None:
        """Append a message's events as lines `[window_id, event]`, each event's JSON as received."""
        if not batch.texts:
            return
        head = b"[" + orjson.dumps(batch.window_id) + b","
        body = b"]\n" + head
        chunk = head + body.join(batch.texts) + b"]\n"
        if chunk.count(b"\n") != len(batch.texts) or b"\r" in chunk:  # line breaks between JSON tokens
            chunk = b"".join([head + orjson.dumps(orjson.loads(bytes(text))) + b"]\n" for text in batch.texts])
        self.chunks.append(chunk)
        self.stats.add(batch.events)
        self.stats.size += len(chunk)
        self.stats.message_count += 1
        self.last_offset = offset

    @property
    def key(self) -> str:
        return block_key(self.team_id, self.session_id, self.topic, self.partition, self.first_offset)
