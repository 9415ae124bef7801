"""`gateway gdpr` export, delete, expire and retention against real ClickHouse: 18.16 over HTTP and chdb.

chdb allows one process per data directory (and other tests hold a chdb session in this process),
so the chdb cases seed and run the CLI in subprocesses, as an operator would.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.clickhouse.schema import events_table_ddl, table_name
from gateway.clickhouse.table import EventsTable
from gateway.clickhouse.writer import open_writer
from gateway.gdpr.retention import Expiry, expire

REPO = Path(__file__).resolve().parents[2]
ALICE, BOB = "alice@example.com", "bob"
TOKEN_A, TOKEN_B = "phc_a", "phc_b"
NOW = datetime.now(UTC).replace(microsecond=0)
_tables = itertools.count()


def rows() -> list[dict]:
    """Alice: 3 recent events in project A, one 400 days old; 1 in project B. Bob: 2 in A, one 35 days old."""
    people = [
        (ALICE, TOKEN_A, 1), (ALICE, TOKEN_A, 2), (ALICE, TOKEN_A, 3), (ALICE, TOKEN_A, 400),
        (ALICE, TOKEN_B, 1), (BOB, TOKEN_A, 1), (BOB, TOKEN_A, 2),
        (BOB, TOKEN_A, 35),
    ]
    out = []
    for index, (distinct_id, token, days_ago) in enumerate(people):
        moment = (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%d %H:%M:%S")
        out.append({
            "uuid": f"00000000-0000-4000-8000-{index:012d}", "event": "$pageview",
            "properties": orjson.dumps({"$current_url": f"https://example.com/{index}", "n": index}).decode(),
            "timestamp": moment, "team_id": 1 if token == TOKEN_A else 2, "distinct_id": distinct_id,
            "elements_chain": "", "created_at": moment, "token": token, "person_mode": "full",
            "historical_migration": 0, "_timestamp": moment, "_offset": index, "_partition": 0, "_topic": "t",
        })
    return out


async def seed(dsn: str, table: str) -> None:
    """Create the sink's events table and insert `rows()`."""
    writer = await open_writer(dsn, 1, "none")
    try:
        await writer.command(events_table_ddl(writer.caps, "default", table))
        body = b"".join(orjson.dumps(row) + b"\n" for row in rows())
        await writer.insert(table_name("default", table), body, None)
    finally:
        await writer.close()


def gdpr_in_process(dsn: str, *argv: str) -> int:
    return main(["gdpr", *argv, "--clickhouse", dsn])


def gdpr_in_subprocess(dsn: str, *argv: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gateway", "gdpr", *argv, "--clickhouse", dsn],
                          env=env, cwd=REPO, timeout=120).returncode


def seed_in_subprocess(dsn: str, table: str) -> None:
    code = (
        "import asyncio; from tests.integration.test_gdpr_clickhouse import seed; "
        f"asyncio.run(seed({dsn!r}, {table!r}))"
    )
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                   check=True, timeout=120)


@pytest.fixture(params=["clickhouse-18.16", "chdb"])
def target(request: pytest.FixtureRequest, tmp_path: Path):
    """(dsn, table, run) for a freshly seeded events table on each kind of server."""
    table = f"gdpr_{os.getpid()}_{next(_tables)}"
    if request.param == "chdb":
        dsn = f"chdb://{tmp_path / 'chdb'}"
        seed_in_subprocess(dsn, table)
        return dsn, table, gdpr_in_subprocess
    dsn = request.getfixturevalue("clickhouse_http_url")
    asyncio.run(seed(dsn, table))
    return dsn, table, gdpr_in_process


def export(run, dsn: str, table: str, out: Path, *argv: str) -> list[dict]:
    assert run(dsn, "export", "--table", table, "--out", str(out), "--audit-log", str(out.parent / "audit.jsonl"),
               *argv) == 0
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_export_then_delete_one_person(target, tmp_path: Path) -> None:
    dsn, table, run = target
    audit = tmp_path / "audit.jsonl"
    exported = export(run, dsn, table, tmp_path / "alice.ndjson", "--distinct-id", ALICE, "--token", TOKEN_A)
    assert len(exported) == 4 and {row["distinct_id"] for row in exported} == {ALICE}
    assert {row["token"] for row in exported} == {TOKEN_A}
    assert exported[0]["properties"]["$current_url"].startswith("https://example.com/")  # parsed, not text
    assert [row["timestamp"] for row in exported] == sorted(row["timestamp"] for row in exported)

    assert run(dsn, "delete", "--table", table, "--distinct-id", ALICE, "--token", TOKEN_A,
               "--audit-log", str(audit), "--operator", "dpo") == 0
    assert export(run, dsn, table, tmp_path / "a.ndjson", "--distinct-id", ALICE, "--token", TOKEN_A) == []
    other_project = export(run, dsn, table, tmp_path / "b.ndjson", "--distinct-id", ALICE)
    assert [row["token"] for row in other_project] == [TOKEN_B]
    assert len(export(run, dsn, table, tmp_path / "bob.ndjson", "--distinct-id", BOB)) == 3

    entries = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    assert [e["action"] for e in entries] == ["export", "delete", "export", "export", "export"]
    deletion = entries[1]
    assert deletion["operator"] == "dpo" and deletion["status"] == "ok"
    assert deletion["rows"] == 4 and deletion["remaining"] == 0 and deletion["token"] == TOKEN_A
    assert ALICE not in audit.read_text() and deletion["subjects"][0].startswith("sha256:")


def test_expire_and_retention(target, tmp_path: Path) -> None:
    dsn, table, run = target
    audit = ["--audit-log", str(tmp_path / "audit.jsonl")]
    assert run(dsn, "expire", "--table", table, "--older-than-days", "30", *audit) == 0
    remaining = export(run, dsn, table, tmp_path / "all.ndjson", "--distinct-id", ALICE, "--distinct-id", BOB)
    assert len(remaining) == 6  # the 400- and 35-day-old events are gone
    expiry = orjson.loads((tmp_path / "audit.jsonl").read_bytes().splitlines()[0])
    old_month = (NOW - timedelta(days=400)).strftime("%Y%m")
    assert expiry["action"] == "expire" and old_month in expiry["dropped_partitions"]
    status = run(dsn, "retention", "--table", table, "--days", "90", *audit)
    assert status == (0 if dsn.startswith("chdb") else 2)  # 18.16 has no table TTL: use expire


def test_expire_keeps_a_month_that_ends_after_the_cutoff_in_the_partitions_time_zone(clickhouse_http_url: str) -> None:
    """18.16's `DateTime` is partitioned by month in the server's time zone (here the column's, 5 h behind
    UTC): October's partition holds events up to 1 November 05:00 UTC, so a cutoff at 03:00 UTC must
    delete its older rows, not drop it with the newer ones."""
    table = f"gdpr_tz_{os.getpid()}"
    newer = datetime(2026, 11, 1, 4, tzinfo=UTC)  # 31 October 23:00 at UTC-5: partition 202610
    older = datetime(2026, 10, 15, tzinfo=UTC)
    cutoff = datetime(2026, 11, 1, 3, tzinfo=UTC)

    async def scenario() -> tuple[Expiry, list[list[str]]]:
        writer = await open_writer(clickhouse_http_url, 1, "none")
        try:
            ddl = events_table_ddl(writer.caps, "default", table)
            await writer.command(ddl.replace("timestamp DateTime,", "timestamp DateTime('Etc/GMT+5'),", 1))
            for index, moment in enumerate((newer, older)):
                await writer.command(f"INSERT INTO default.{table} (uuid, timestamp) SELECT "
                                     f"toUUID('00000000-0000-4000-8000-00000000000{index}'), "
                                     f"toDateTime({int(moment.timestamp())})")
            expiry = await expire(EventsTable(writer, "default", table), 30, 60, now=cutoff + timedelta(days=30))
            left = await writer.select(f"SELECT toUnixTimestamp(timestamp) FROM default.{table}")
            return expiry, left
        finally:
            await writer.command(f"DROP TABLE IF EXISTS default.{table}")
            await writer.close()

    expiry, left = asyncio.run(scenario())
    assert expiry.dropped_partitions == [] and expiry.deleted_rows == 1
    assert left == [[str(int(newer.timestamp()))]]
