"""Recordings retention removes whole recordings and orphaned blocks, never a block a kept row names."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from gateway.clickhouse.writer import open_writer
from gateway.recordings.metadata import ReplayEvents
from gateway.recordings.retention import expire
from gateway.recordings.storage import DirectoryStore

pytest.importorskip("chdb")
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
DAYS = 30


def row(session_id: str, key: str, last: datetime) -> bytes:
    moment = last.strftime("%Y-%m-%d %H:%M:%S")
    return orjson.dumps({
        "session_id": session_id, "team_id": 1, "distinct_id": "d", "token": "phc_t",
        "min_first_timestamp": moment, "max_last_timestamp": moment, "snapshot_source": "web",
        "block_first_timestamps": [moment], "block_last_timestamps": [moment], "block_urls": [key],
        "_topic": "t", "_partition": 0, "_first_offset": 0, "_last_offset": 0, "_timestamp": "2026-12-07 12:00:00",
    }, option=orjson.OPT_APPEND_NEWLINE)


@pytest.mark.parametrize("server", ["chdb", "clickhouse-18.16"])
def test_expire_keeps_an_old_object_whose_row_is_kept_and_deletes_orphans_and_expired(
    server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A block written before the cutoff whose events end after it (a client clock ahead, a late flush)
    is still named by its kept row: deleting it would leave a recording that cannot be played."""
    store = DirectoryStore(tmp_path / "blocks")
    blocks = {  # key: (the row's last event or None for no row, the object's mtime)
        "sessions/1/kept/a.jsonl.zst": (NOW - timedelta(days=DAYS - 1), NOW - timedelta(days=DAYS, hours=6)),
        "sessions/1/expired/a.jsonl.zst": (NOW - timedelta(days=DAYS + 2), NOW - timedelta(days=DAYS + 2)),
        "sessions/1/orphan/a.jsonl.zst": (None, NOW - timedelta(days=DAYS, hours=6)),
        "sessions/1/recent-orphan/a.jsonl.zst": (None, NOW - timedelta(days=1)),
    }

    url = f"chdb://{tmp_path / 'chdb'}" if server == "chdb" else request.getfixturevalue("clickhouse_http_url")

    async def scenario() -> list[str]:
        writer = await open_writer(url, max_in_flight=1, compression="none")
        try:
            events = ReplayEvents(writer, table=f"replay_retention_{os.getpid()}_{tmp_path.name}"[:60])
            await events.create()
            rows = [row(key.split("/")[2], key, last) for key, (last, _) in blocks.items() if last is not None]
            await writer.insert(events.name, b"".join(rows), None)
            for key, (_, modified) in blocks.items():
                await store.put(key, b"block")
                os.utime(tmp_path / "blocks" / key, (modified.timestamp(), modified.timestamp()))
            removal = await expire(events, store, DAYS, timeout=60, now=NOW)
            assert (removal.sessions, removal.blocks, removal.rows, removal.remaining_rows) == (1, 1, 1, 0)
            return [item.key async for item in store.list("sessions/")]
        finally:
            await writer.close()

    assert asyncio.run(scenario()) == ["sessions/1/kept/a.jsonl.zst", "sessions/1/recent-orphan/a.jsonl.zst"]
