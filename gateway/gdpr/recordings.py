"""A person's session recordings in `gateway gdpr export|delete`: every session of any of their
distinct ids (metadata in `session_replay_events`, blocks in the recordings storage).

Nothing happens where the recordings sink never ran (no metadata table on the ClickHouse target).
"""

from __future__ import annotations

import argparse
from typing import IO

import orjson

from gateway.clickhouse.schema import quote_string
from gateway.clickhouse.writer import Writer
from gateway.recordings.blocks import decode_block
from gateway.recordings.metadata import ReplayEvents, distinct_id_filter
from gateway.recordings.retention import Removal, erase_person
from gateway.recordings.storage import BlockStore, S3Config, open_store


async def _open(writer: Writer, args: argparse.Namespace) -> tuple[ReplayEvents, BlockStore] | None:
    events = ReplayEvents(writer, args.database, args.replay_table)
    if not await events.exists():
        return None
    s3 = S3Config(bucket="", endpoint_url=args.s3_endpoint_url, region=args.s3_region,
                  access_key_id=args.s3_access_key_id, secret_access_key=args.s3_secret_access_key)
    return events, await open_store(str(args.recordings_storage), s3)


async def export_recordings(writer: Writer, args: argparse.Namespace, out: IO[bytes]) -> int:
    """One NDJSON line per session: `{"session_recording": {summary…, "events": [rrweb events]}}`."""
    opened = await _open(writer, args)
    if opened is None:
        return 0
    events, store = opened
    where = distinct_id_filter(args.distinct_id)
    if args.token:
        where += f" AND token = {quote_string(args.token)}"
    try:
        sessions = await events.sessions(where)
        for summary in sessions:
            out.write(b'{"session_recording":' + orjson.dumps(summary)[:-1] + b',"events":[')
            first = True
            for key in await events.session_blocks(summary["session_id"], summary["team_id"]):
                for _, event in decode_block(await store.get(key)):
                    out.write((b"" if first else b",") + orjson.dumps(event))
                    first = False
            out.write(b"]}}\n")
    finally:
        await store.close()
    out.flush()
    return len(sessions)


async def delete_recordings(writer: Writer, args: argparse.Namespace) -> Removal | None:
    opened = await _open(writer, args)
    if opened is None:
        return None
    events, store = opened
    try:
        return await erase_person(events, store, args.distinct_id, args.token, args.timeout)
    finally:
        await store.close()
