"""Appends/s of 1 KB records into the spool from N concurrent appenders (one record per append).

Usage: python bench/spool_append.py [policy] [appenders] [seconds]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import timeit
from pathlib import Path

import uvloop

from gateway.core.record import Record
from gateway.spool import FsyncPolicy, Spool, SpoolReader
from gateway.spool.format import encode_record

RECORD = Record(
    "events_plugin_ingestion",
    b"phc_token:user-123456",
    (("token", b"phc_token"), ("distinct_id", b"user-123456"), ("timestamp", b"1732900000000"),
     ("event", b"$pageview"), ("uuid", b"0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")),
    b'{"event":"$pageview","properties":{' + b'"p":"' + b"x" * 960 + b'"}}',
)


async def run(policy: FsyncPolicy, appenders: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(Path(directory), fsync=policy)
        await spool.open()
        done = 0
        deadline = time.perf_counter() + seconds

        async def appender() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await spool.append([RECORD])
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(appenders)))
        elapsed = time.perf_counter() - start
        stats = spool.stats()
        await spool.close()
        print(f"{policy}: {done / elapsed:,.0f} appends/s with {appenders} appenders, "
              f"{stats.fsyncs} fsyncs, {done / max(stats.flushes, 1):.1f} appends per flush")
        start = time.perf_counter()
        with SpoolReader(Path(directory), "bench") as reader:
            read = 0
            while batch := reader.read_batch():
                read += len(batch)
        print(f"read back: {read / (time.perf_counter() - start):,.0f} records/s")


def main() -> None:
    policy = FsyncPolicy(sys.argv[1] if len(sys.argv) > 1 else "batch")
    appenders = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    n = 100_000
    print(f"record of {len(RECORD.value)} B value, frame {len(encode_record(RECORD))} B: encode "
          f"{timeit.timeit(lambda: encode_record(RECORD), number=n) / n * 1e6:.2f} µs")
    uvloop.run(run(policy, appenders, seconds))


if __name__ == "__main__":
    main()
