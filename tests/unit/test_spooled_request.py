"""A capture request spooled whole (one frame, embedded mode): every reader gets exactly the records the
gateway would have built at request time, next to record frames of older segments, and a purge can
remove one person from inside it."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.capture.events import RecordOptions, RequestContext, Topics, analytics_records, check_events
from gateway.capture.parse import ParsedRequest
from gateway.capture.spooled import request_content, request_records
from gateway.cli import main
from gateway.core.record import Record
from gateway.spool import Spool, SpoolReader, iter_records
from gateway.spool.crypto import Keyring, SpoolKey

NOW = datetime(2026, 12, 7, 4, 40, 1, 250_123, tzinfo=UTC)
CONTEXT = RequestContext("203.0.113.9", NOW)
VICTIM = "alice@example.com"
DEFAULTS = RecordOptions()


def event(n: int, distinct_id: str = "user", **fields: object) -> dict:
    return {"uuid": f"01932b2e-0000-7000-8000-{n:012d}", "event": "$pageview",
            "properties": {"distinct_id": distinct_id, "n": n}, "timestamp": "2026-12-07T04:40:00.5Z", **fields}


def request(*events: dict, sent_at: datetime | None = None, historical: bool = False) -> ParsedRequest:
    return ParsedRequest(list(events), "phc_token", sent_at, historical)


def spooled(parsed: ParsedRequest, options: RecordOptions = DEFAULTS) -> tuple[bytes, list[Record]]:
    """The spool content of a request, and the records the gateway builds for it at request time."""
    check_events(parsed)
    expected = analytics_records(copy.deepcopy(parsed), CONTEXT, options)
    return request_content(parsed, CONTEXT, options), expected


def rec(n: int) -> Record:
    return Record("events", str(n).encode(), (("distinct_id", b"someone"),), b'{"n":%d}' % n)


CASES = {
    "plain": (request(event(1), event(2, "other")), RecordOptions()),
    "sent_at, offsets, special topics, cookieless, no uuid": (
        request(
            event(1, offset=1500),
            event(2, event="$exception"),
            event(3, event="$$heatmap", properties={"$cookieless_mode": True, "distinct_id": "x"}),
            {"uuid": None, "event": "signup", "properties": {"distinct_id": 7}, "timestamp": "1764583197123"},
            sent_at=NOW - timedelta(seconds=3, microseconds=5),
        ),
        RecordOptions(),
    ),
    "historical request": (request(event(1), event(2, event="$exception"), historical=True), RecordOptions()),
    "own topics and rerouting": (
        request(event(1, timestamp="2026-11-01T00:00:00Z"), event(2)),
        RecordOptions(Topics(main="mine", historical="old", exceptions="errs"), timedelta(days=1, microseconds=3)),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_spooled_request_gives_the_records_built_at_request_time(case: str) -> None:
    parsed, options = CASES[case]
    content, expected = spooled(copy.deepcopy(parsed), options)
    assert request_records(content) == expected
    assert len({record.topic for record in expected}) > 1 or case == "plain"


def test_uuids_are_given_before_spooling_not_by_the_reader() -> None:
    parsed = request({"uuid": None, "event": "e", "properties": {"distinct_id": "d"}})
    content, _ = spooled(parsed)
    first, again = request_records(content), request_records(content)
    assert first == again and first[0].header("uuid") == parsed.events[0]["uuid"].encode()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_request_frames_and_record_frames_read_in_order(tmp_path: Path, encrypted: bool) -> None:
    """An upgraded gateway appends request frames after the record frames an older one wrote."""
    ring = Keyring([SpoolKey("k1", bytes(range(32)))], "test") if encrypted else None
    content, built = spooled(request(event(1), event(2), event(3)))

    async def write() -> None:
        spool = Spool(tmp_path, fsync="never", keyring=ring)
        await spool.open()
        await spool.append([rec(0)])
        await spool.append_request(content, len(built))
        await spool.append([rec(4)])
        stats = spool.stats()
        await spool.close()
        assert stats.records_written == 5

    asyncio.run(write())
    assert list(iter_records(tmp_path, keyring=ring)) == [rec(0), *built, rec(4)]
    with SpoolReader(tmp_path, "kafka", ring) as reader:
        first = reader.read_batch(max_records=2)  # a frame is never split: the whole request comes along
        assert first.records == [rec(0), *built]
        reader.commit(first)
    with SpoolReader(tmp_path, "kafka", ring) as reader:
        assert reader.read_batch().records == [rec(4)]


def test_purge_removes_one_person_from_inside_a_request(tmp_path: Path) -> None:
    directory = tmp_path / "spool" / "worker-0"
    directory.mkdir(parents=True)
    mixed, built = spooled(request(event(1, VICTIM), event(2, "bob"), event(3, VICTIM), event(4, "carol")))
    later, later_built = spooled(request(event(5, VICTIM), event(6, "dave")))

    async def write() -> None:
        spool = Spool(directory, fsync="never")
        await spool.open()
        await spool.append([rec(0)])
        await spool.append_request(mixed, len(built))
        await spool.append_request(later, len(later_built))
        await spool.close()

    asyncio.run(write())
    with SpoolReader(directory, "after-mixed") as reader:
        reader.commit(reader.read_batch(max_records=2))  # past rec(0) and the whole mixed request
    with SpoolReader(directory, "after-first") as reader:
        reader.commit(reader.read_batch(max_records=1))
    assert main(["gdpr", "purge-spool", "--distinct-id", VICTIM, "--data-dir", str(tmp_path),
                 "--audit-log", str(tmp_path / "audit.jsonl")]) == 0
    kept = [built[1], built[3], later_built[1]]
    assert list(iter_records(directory)) == [rec(0), *kept]
    with SpoolReader(directory, "after-first") as reader:
        assert reader.read_batch().records == kept
    with SpoolReader(directory, "after-mixed") as reader:
        assert reader.read_batch().records == [later_built[1]]
