"""`session_replay_events` in ClickHouse: one row per stored block, aggregated per session on read.

The columns are PostHog's (`session_id`, `team_id`, `distinct_id`, `min_first_timestamp`,
`max_last_timestamp`, `first_url`, click/keypress/mouse-activity and console counts,
`active_milliseconds`, `size`, `message_count`, `event_count`, `snapshot_source`, `block_*` arrays)
plus the project `token` and where the block came from (`_topic`, `_partition`, `_first_offset`,
`_last_offset`), which the sink reads back after a restart so it never stores a snapshot item
twice. PostHog's table is an AggregatingMergeTree of SimpleAggregateFunction columns, which ClickHouse 18.16 lacks; a
ReplacingMergeTree of block rows plus `GROUP BY session_id` on read gives the same answers on 18.16
and chdb alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.clickhouse.schema import ServerCaps, quote_string, table_name
from gateway.clickhouse.writer import Writer
from gateway.recordings.blocks import SessionBuffer

COUNTS = ("click_count", "keypress_count", "mouse_activity_count", "console_log_count", "console_warn_count",
          "console_error_count", "active_milliseconds", "size", "message_count", "event_count")


def ddl(caps: ServerCaps, database: str, table: str) -> str:
    moment = "DateTime64(3, 'UTC')" if caps.datetime64 else "DateTime('UTC')"
    columns = [
        "session_id String", "team_id Int64", "distinct_id String", "token String",
        f"min_first_timestamp {moment}", f"max_last_timestamp {moment}", "first_url Nullable(String)",
        *(f"{name} Int64" for name in COUNTS), "snapshot_source String",
        f"block_first_timestamps Array({moment})", f"block_last_timestamps Array({moment})",
        "block_urls Array(String)",
        "_topic String", "_partition UInt64", "_first_offset UInt64", "_last_offset UInt64",
        "_timestamp DateTime",
    ]
    return "\n".join([
        f"CREATE TABLE IF NOT EXISTS {table_name(database, table)} (\n    " + ",\n    ".join(columns) + "\n)",
        "ENGINE = ReplacingMergeTree(_timestamp)",
        "PARTITION BY toYYYYMMDD(min_first_timestamp)",
        "ORDER BY (team_id, session_id, _topic, _partition, _first_offset)",
    ])


def _moment(epoch_ms: float, subsecond: bool) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if subsecond else moment.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class StoredBlock:
    key: str
    session_id: str
    team_id: int
    distinct_id: str


class ReplayEvents:
    """The `session_replay_events` table on one server (HTTP or chdb writer)."""

    def __init__(self, writer: Writer, database: str = "default", table: str = "session_replay_events") -> None:
        self.writer = writer
        self.database = database
        self.table = table
        self.name = table_name(database, table)

    async def create(self) -> None:
        await self.writer.command(ddl(self.writer.caps, self.database, self.table))

    async def exists(self) -> bool:
        rows = await self.writer.select(
            f"SELECT count() FROM system.tables WHERE database = {quote_string(self.database)}"
            f" AND name = {quote_string(self.table)}")
        return rows[0][0] == "1"

    def row(self, buffer: SessionBuffer) -> bytes:
        stats = buffer.stats
        subsecond = self.writer.caps.datetime64
        first, last = _moment(stats.first_timestamp, subsecond), _moment(stats.last_timestamp, subsecond)
        row: dict[str, Any] = {
            "session_id": buffer.session_id, "team_id": buffer.team_id, "distinct_id": buffer.distinct_id,
            "token": buffer.token,
            "min_first_timestamp": first, "max_last_timestamp": last, "first_url": stats.first_url,
            **{name: getattr(stats, name) for name in COUNTS}, "snapshot_source": buffer.source,
            "block_first_timestamps": [first], "block_last_timestamps": [last], "block_urls": [buffer.key],
            "_topic": buffer.topic, "_partition": buffer.partition, "_first_offset": buffer.first_offset,
            "_last_offset": buffer.last_offset,
            "_timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        }
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)

    async def insert(self, buffers: Sequence[SessionBuffer]) -> None:
        """The rows of several stored blocks in one INSERT (each INSERT is a part for ClickHouse to merge)."""
        names = "\n".join(f"{buffer.key}:{buffer.last_offset}" for buffer in buffers)
        token = hashlib.sha1(names.encode(), usedforsecurity=False).hexdigest()
        await self.writer.insert(self.name, b"".join(map(self.row, buffers)), token)

    async def stored_offsets(self, topic: str, partition: int, since: int) -> dict[str, int]:
        """Per session, the last offset already stored in a block of this partition at or after `since`."""
        rows = await self.writer.select(
            f"SELECT session_id, max(_last_offset) FROM {self.name} WHERE _topic = {quote_string(topic)}"
            f" AND _partition = {int(partition)} AND _last_offset >= {int(since)} GROUP BY session_id")
        return {session: int(offset) for session, offset in rows}

    async def session_blocks(self, session_id: str, team_id: int | None = None) -> list[str]:
        """The session's block keys in playback order."""
        where = f"session_id = {quote_string(session_id)}"
        if team_id is not None:
            where += f" AND team_id = {int(team_id)}"
        rows = await self.writer.select(
            f"SELECT DISTINCT block_urls[1], min_first_timestamp, _topic, _partition, _first_offset"
            f" FROM {self.name} WHERE {where}"
            f" ORDER BY min_first_timestamp, _topic, _partition, _first_offset")
        return [row[0] for row in rows]

    async def sessions(self, where: str) -> list[dict[str, Any]]:
        """One aggregated row per session matching `where` (PostHog's session_replay_events read)."""
        sums = ", ".join(f"sum({name}) AS {name}" for name in COUNTS)
        body = await self.writer.fetch(
            f"SELECT session_id, any(team_id) AS team_id, any(distinct_id) AS distinct_id,"
            f" min(min_first_timestamp) AS start_time, max(max_last_timestamp) AS end_time,"
            f" argMin(first_url, min_first_timestamp) AS first_url, {sums}, count() AS block_count"
            f" FROM (SELECT * FROM {self.name} FINAL WHERE {where}) GROUP BY session_id ORDER BY start_time",
            "JSONEachRow")
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]

    async def named(self, keys: Sequence[str], chunk: int = 1000) -> set[str]:
        """The block keys among `keys` that a row names."""
        found: set[str] = set()
        for start in range(0, len(keys), chunk):
            listed = ", ".join(map(quote_string, keys[start:start + chunk]))
            rows = await self.writer.select(
                f"SELECT DISTINCT block_urls[1] FROM {self.name} WHERE block_urls[1] IN ({listed})")
            found.update(row[0] for row in rows)
        return found

    async def blocks_where(self, where: str) -> list[StoredBlock]:
        rows = await self.writer.select(
            f"SELECT DISTINCT block_urls[1], session_id, team_id, distinct_id FROM {self.name} WHERE {where}")
        return [StoredBlock(key, session, int(team), distinct) for key, session, team, distinct in rows]


def distinct_id_filter(distinct_ids: Sequence[str]) -> str:
    return f"distinct_id IN ({', '.join(quote_string(d) for d in distinct_ids)})"
