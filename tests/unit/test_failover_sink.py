"""FailoverSink with a fake remote and a real spool: direct while the remote acks, spooling while it
is away, replay in order, back to direct; spool failures are 503s; encrypted spools replay with the
keyring the spool was given (there is no process keyring)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from gateway.core.errors import ServiceUnavailable
from gateway.core.record import Record
from gateway.sinks import failover
from gateway.sinks.failover import FailoverMetrics, FailoverSink, Mode, Rejected
from gateway.sinks.spool import SpoolSink
from gateway.spool import SpoolReader, iter_records
from gateway.spool.crypto import Keyring, SpoolKey


class FakeRemote:
    """Acks everything while `up`; refuses with ConnectionError while down, like an unreachable broker."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.received: list[Record] = []
        self.rejecting = False
        self.resets: list[int] = []

    async def ping(self) -> bool:
        if not self.up:
            raise ConnectionError("remote down")
        return True

    async def produce(self, records: Sequence[Record]) -> None:
        if not self.up:
            raise ConnectionError("remote down")
        if self.rejecting:
            raise Rejected("refused for good", 400, len(records))
        self.received += records

    async def produce_bulk(self, records: Sequence[Record]) -> None:
        await self.produce(records)

    generation = 0

    def reset(self, generation: int) -> None:
        self.resets.append(generation)

    async def stop(self) -> None:
        pass


def rec(n: int) -> Record:
    return Record("events", str(n).encode(), (), f'{{"n":{n}}}'.encode())


def numbers(records: Sequence[Record]) -> list[int]:
    return [int(record.key or b"-1") for record in records]


def fresh_metrics() -> FailoverMetrics:
    registry = CollectorRegistry()
    return FailoverMetrics(
        spooling=Gauge("spooling", "", registry=registry),
        spooled=Counter("spooled", "", registry=registry),
        replayed=Counter("replayed", "", registry=registry),
    )


def sink_at(directory: Path, remote: FakeRemote, keyring: Keyring | None = None,
            adopt: Sequence[Path] = ()) -> FailoverSink:
    spool = SpoolSink.at(directory, fsync="batch", fsync_window_ms=1, max_bytes=1 << 30, keyring=keyring)
    return FailoverSink(remote, spool, name="fake", ack_timeout=0.5, metrics=fresh_metrics(), adopt=adopt)


def count(counter: Counter) -> float:
    return next(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def spool_errors(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_spool_errors_total", {"kind": "main", "reason": reason}) or 0.0


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failover, "IDLE_POLL_SECONDS", 0.02)
    monkeypatch.setattr(failover, "MAX_BACKOFF_SECONDS", 0.05)


async def until(condition, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_direct_while_the_remote_acks(tmp_path: Path) -> None:
    async def scenario() -> None:
        remote = FakeRemote()
        sink = sink_at(tmp_path, remote)
        await sink.start()
        for n in range(3):
            await sink.deliver([rec(n)])
        assert sink.mode is Mode.DIRECT and sink.readiness().degraded is False
        await sink.close()
        assert numbers(remote.received) == [0, 1, 2]

    asyncio.run(scenario())
    assert list(iter_records(tmp_path)) == []


def test_a_failed_delivery_retires_the_client_it_began_on(tmp_path: Path) -> None:
    class Replaced(FakeRemote):
        async def produce(self, records: Sequence[Record]) -> None:
            self.generation += 1  # meanwhile another request's failure replaced the client
            raise TimeoutError

    async def scenario() -> list[int]:
        remote = Replaced()
        sink = sink_at(tmp_path, remote)
        await sink.start()
        await sink.deliver([rec(0)])  # spooled, acknowledged
        await sink.close()
        return remote.resets

    assert asyncio.run(scenario()) == [0]  # the remote ignores it: client 0 is retired already


def test_spools_while_the_remote_is_away_replays_in_order_then_goes_direct(tmp_path: Path) -> None:
    async def scenario() -> None:
        remote = FakeRemote()
        sink = sink_at(tmp_path, remote)
        await sink.start()
        await sink.deliver([rec(0)])
        remote.up = False
        await sink.deliver([rec(1), rec(2)])  # fails at the remote: spooled, still acknowledged
        assert sink.mode is Mode.SPOOLING and sink.readiness().degraded is True
        remote.up = True
        await sink.deliver([rec(3)])  # spooling: behind 1 and 2, to keep the order
        await until(lambda: sink.mode is Mode.DIRECT)
        await sink.deliver([rec(4)])
        await sink.close()
        assert numbers(remote.received) == [0, 1, 2, 3, 4]
        assert (count(sink.metrics.spooled), count(sink.metrics.replayed)) == (3, 3)

    asyncio.run(scenario())
    with SpoolReader(tmp_path, "fake") as reader:
        assert reader.lag() == 0


def test_remote_down_at_start_serves_from_the_spool(tmp_path: Path) -> None:
    async def scenario() -> None:
        remote = FakeRemote(up=False)
        sink = sink_at(tmp_path, remote)
        await sink.start()
        assert sink.mode is Mode.SPOOLING
        await sink.deliver([rec(0), rec(1)])
        remote.up = True
        await until(lambda: sink.mode is Mode.DIRECT)
        await sink.close()
        assert numbers(remote.received) == [0, 1]

    asyncio.run(scenario())


def test_a_permanent_refusal_reaches_the_client_in_direct_mode(tmp_path: Path) -> None:
    async def scenario() -> None:
        remote = FakeRemote()
        remote.rejecting = True
        sink = sink_at(tmp_path, remote)
        await sink.start()
        with pytest.raises(Rejected):
            await sink.deliver([rec(0)])
        assert sink.mode is Mode.DIRECT  # not a reason to spool
        await sink.close()

    asyncio.run(scenario())
    assert list(iter_records(tmp_path)) == []


def test_a_spool_write_error_while_spooling_is_a_503_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite
    disk_full = {"on": False}

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if disk_full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    before = spool_errors("no_space")

    async def scenario() -> None:
        remote = FakeRemote(up=False)
        sink = sink_at(tmp_path, remote)
        await sink.start()
        await sink.deliver([rec(0)])
        disk_full["on"] = True
        with pytest.raises(ServiceUnavailable) as answer:
            await sink.deliver([rec(1)])
        assert (answer.value.status, answer.value.retry_after) == (503, 30)
        disk_full["on"] = False
        await sink.deliver([rec(2)])
        remote.up = True
        await until(lambda: sink.mode is Mode.DIRECT)
        await sink.close()
        assert numbers(remote.received) == [0, 2]

    asyncio.run(scenario())
    assert spool_errors("no_space") == before + 1


def test_encrypted_spools_replay_with_the_spools_keyring(tmp_path: Path) -> None:
    keyring = Keyring([SpoolKey("k1", bytes(range(32)))])
    own, orphan = tmp_path / "worker-0", tmp_path / "worker-1"

    async def fill_orphan() -> None:  # a spool left by a worker of a previous, larger run
        sink = sink_at(orphan, FakeRemote(up=False), keyring)
        await sink.start()
        await sink.deliver([rec(10), rec(11)])
        await sink.close()

    async def scenario() -> None:
        remote = FakeRemote(up=False)
        sink = sink_at(own, remote, keyring, adopt=[orphan])
        await sink.start()
        await sink.deliver([rec(0), rec(1)])
        remote.up = True
        await until(lambda: sink.mode is Mode.DIRECT and len(remote.received) == 4)
        await sink.close()
        assert sorted(numbers(remote.received)) == [0, 1, 10, 11]

    asyncio.run(fill_orphan())
    asyncio.run(scenario())


def test_records_spooled_while_the_remote_is_probed_reach_it_before_the_next_direct_ones(tmp_path: Path) -> None:
    """The replayer found the spool drained and pings the remote; meanwhile a request is spooled and
    answered. Its client's next request, sent the moment the sink is DIRECT again, must land after it."""

    async def scenario() -> None:
        remote = FakeRemote(up=False)
        sink = sink_at(tmp_path, remote)
        await sink.start()
        await sink.deliver([rec(0)])
        probing, answer = asyncio.Event(), asyncio.Event()

        async def slow_ping() -> bool:
            probing.set()
            await answer.wait()
            return True

        remote.ping = slow_ping  # type: ignore[method-assign]
        remote.up = True
        await until(probing.is_set)
        await sink.deliver([rec(1)])  # spooled during the probe, acknowledged
        clients: list[asyncio.Task] = []
        set_mode = sink._set_mode

        def on_mode(mode: Mode) -> None:  # a client sending as soon as the sink is DIRECT
            set_mode(mode)
            if mode is Mode.DIRECT and not clients:
                clients.append(asyncio.create_task(sink.deliver([rec(2)])))

        sink._set_mode = on_mode  # type: ignore[method-assign]
        answer.set()
        await until(lambda: len(remote.received) == 3)
        await sink.close()
        assert numbers(remote.received) == [0, 1, 2]

    asyncio.run(scenario())


def test_requests_held_for_the_switch_back_are_spooled_when_the_replay_is_slow(tmp_path: Path) -> None:
    async def scenario() -> None:
        remote = FakeRemote(up=False)
        sink = sink_at(tmp_path, remote)
        await sink.start()
        await sink.deliver([rec(0)])
        probing, answer, replaying = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def slow_ping() -> bool:
            probing.set()
            await answer.wait()
            return True

        async def stuck_replay(records: Sequence[Record]) -> None:
            replaying.set()
            await asyncio.Event().wait()

        remote.ping = slow_ping  # type: ignore[method-assign]
        remote.up = True
        await until(probing.is_set)
        await sink.deliver([rec(1)])
        remote.produce_bulk = stuck_replay  # type: ignore[method-assign]
        answer.set()
        await until(replaying.is_set)  # replaying rec(1) while requests are held
        async with asyncio.timeout(sink.ack_timeout * 3):  # held for ack_timeout at most, then spooled
            await sink.deliver([rec(2)])
        assert sink.mode is Mode.SPOOLING
        await sink.close()
        assert numbers(remote.received) == [0]

    asyncio.run(scenario())
    assert numbers(list(iter_records(tmp_path))) == [0, 1, 2]
