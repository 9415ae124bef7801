"""Read-only views of a spool directory for the CLI (`spool stats`, `spool dump`) and for adoption.

Safe on a directory a running gateway writes to: nothing here takes or waits for a lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.core.record import Record
from gateway.spool.crypto import Keyring
from gateway.spool.format import HEADER_SIZE, header_key_id
from gateway.spool.locks import WRITE_LOCK, is_locked
from gateway.spool.reader import count_frames, lag_bytes, load_cursors
from gateway.spool.segment import list_segments, segment_name, segment_sizes


def is_write_locked(directory: Path) -> bool:
    """True while a writer holds `directory`; False means an orphaned spool that can be adopted."""
    return is_locked(Path(directory) / WRITE_LOCK)


def segment_keys(directory: Path, keyring: Keyring | None = None) -> dict[str, int]:
    """Segments per encryption key: "plaintext", the key's label when `keyring` has it, else its id."""
    labels = {key.key_id: key.label for key in keyring.keys} if keyring else {}
    counts: dict[str, int] = {}
    for number in list_segments(directory):
        try:
            with open(directory / segment_name(number), "rb") as file:
                key_id = header_key_id(file.read(HEADER_SIZE))
        except FileNotFoundError:
            continue
        if key_id is None:
            name = "invalid header"
        else:
            name = "plaintext" if key_id == 0 else labels.get(key_id, f"{key_id:08x}")
        counts[name] = counts.get(name, 0) + 1
    return counts


def spool_stats(directory: Path, keyring: Keyring | None = None) -> dict[str, Any]:
    """Segments, bytes, frame count (validates every frame: reads all data), segments per encryption
    key (no key needed) and each cursor's lag."""
    directory = Path(directory)
    sizes = segment_sizes(directory)
    return {
        "directory": str(directory),
        "writer_active": is_write_locked(directory),
        "segments": len(sizes),
        "oldest_segment": min(sizes, default=None),
        "newest_segment": max(sizes, default=None),
        "bytes": sum(sizes.values()),
        "frames": count_frames(directory),  # a record each, or a request of records in embedded mode
        "keys": segment_keys(directory, keyring),
        "cursors": {
            name: {
                "segment": position.segment,
                "offset": position.offset,
                "lag_bytes": lag_bytes(directory, position),
            }
            for name, position in sorted(load_cursors(directory).items())
        },
    }


def record_to_json(record: Record) -> dict[str, Any]:
    """A JSON-ready view of a record; bytes decoded as UTF-8 (invalid bytes replaced), value kept text."""
    return {
        "topic": record.topic,
        "key": None if record.key is None else record.key.decode(errors="replace"),
        "headers": {name: value.decode(errors="replace") for name, value in record.headers},
        "value": record.value.decode(errors="replace"),
    }
