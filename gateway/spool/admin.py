"""Read-only views of a spool directory for the CLI (`spool stats`, `spool dump`) and for adoption.

Safe on a directory a running gateway writes to: nothing here takes or waits for a lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.capture.record import Record
from gateway.spool.locks import WRITE_LOCK, is_locked
from gateway.spool.reader import count_records, lag_bytes, load_cursors
from gateway.spool.segment import segment_sizes


def is_write_locked(directory: Path) -> bool:
    """True while a writer holds `directory`; False means an orphaned spool that can be adopted."""
    return is_locked(Path(directory) / WRITE_LOCK)


def spool_stats(directory: Path) -> dict[str, Any]:
    """Segments, bytes, record count (validates every frame: reads all data) and each cursor's lag."""
    directory = Path(directory)
    sizes = segment_sizes(directory)
    return {
        "directory": str(directory),
        "writer_active": is_write_locked(directory),
        "segments": len(sizes),
        "oldest_segment": min(sizes, default=None),
        "newest_segment": max(sizes, default=None),
        "bytes": sum(sizes.values()),
        "records": count_records(directory),
        "cursors": {
            name: {"segment": position.segment, "offset": position.offset,
                   "lag_bytes": lag_bytes(directory, position)}
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
