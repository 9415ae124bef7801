"""TeeSink (mirror mode) with fake sinks: both get every record, a request is answered only once both
stored it, a failure of either fails the request, and readiness combines both."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.core.errors import ServiceUnavailable
from gateway.core.readiness import Readiness
from gateway.core.record import Record
from gateway.sinks.tee import TeeSink

RECORDS = [Record("events", b"k1", (("token", b"phc_x"),), b"v1"), Record("events", None, (), b"v2")]


class FakeSink:
    def __init__(self, name: str, log: list[str], readiness: Readiness | None = None) -> None:
        self.name = name
        self.log = log
        self.delivered: list[Record] = []
        self.release = asyncio.Event()
        self.release.set()
        self.error: Exception | None = None
        self.state = readiness or Readiness(ready=True, degraded=False, detail=name)

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def deliver(self, records: Sequence[Record]) -> None:
        await self.release.wait()
        if self.error is not None:
            raise self.error
        self.delivered += records
        self.log.append(f"stored {self.name}")

    async def close(self) -> None:
        self.log.append(f"close {self.name}")

    def readiness(self) -> Readiness:
        return self.state


def test_both_sinks_get_every_record_and_start_and_close_in_order() -> None:
    log: list[str] = []
    local, upstream = FakeSink("local", log), FakeSink("upstream", log)
    tee = TeeSink(local, upstream)

    async def scenario() -> None:
        await tee.start()
        await tee.deliver(RECORDS)
        await tee.close()

    asyncio.run(scenario())
    assert local.delivered == RECORDS
    assert upstream.delivered == RECORDS
    assert log[:2] == ["start local", "start upstream"]
    assert log[-2:] == ["close local", "close upstream"]


def test_the_answer_waits_for_the_slower_sink() -> None:
    log: list[str] = []
    local, upstream = FakeSink("local", log), FakeSink("upstream", log)
    tee = TeeSink(local, upstream)

    async def scenario() -> None:
        upstream.release.clear()
        delivery = asyncio.create_task(tee.deliver(RECORDS))
        await asyncio.sleep(0.01)
        assert not delivery.done()  # local stored, upstream not yet: no answer
        assert log == ["stored local"]
        upstream.release.set()
        await asyncio.wait_for(delivery, 1)

    asyncio.run(scenario())
    assert log == ["stored local", "stored upstream"]


@pytest.mark.parametrize("failing", ["local", "upstream"])
def test_a_failure_of_either_sink_fails_the_delivery(failing: str) -> None:
    log: list[str] = []
    sinks = {"local": FakeSink("local", log), "upstream": FakeSink("upstream", log)}
    sinks[failing].error = ServiceUnavailable("spool full")
    tee = TeeSink(sinks["local"], sinks["upstream"])
    with pytest.raises(ServiceUnavailable, match="spool full"):
        asyncio.run(tee.deliver(RECORDS))


def test_readiness_is_ready_only_when_both_are_and_degraded_when_either_is() -> None:
    log: list[str] = []
    ok = Readiness(ready=True, degraded=False, detail="kafka")
    spooling = Readiness(ready=True, degraded=True, detail="upstream down: spooling")
    full = Readiness(ready=False, degraded=True, detail="spool full")
    assert TeeSink(FakeSink("a", log, ok), FakeSink("b", log, ok)).readiness() == Readiness(
        ready=True, degraded=False, detail="kafka; kafka"
    )
    assert TeeSink(FakeSink("a", log, ok), FakeSink("b", log, spooling)).readiness() == Readiness(
        ready=True, degraded=True, detail="kafka; upstream down: spooling"
    )
    assert TeeSink(FakeSink("a", log, full), FakeSink("b", log, ok)).readiness() == Readiness(
        ready=False, degraded=True, detail="spool full; kafka"
    )
