"""CommitTracker: offsets advance only past the longest prefix of stored batches, whatever order the
concurrent inserts finish in (else a crash could skip a batch that was never stored)."""

from __future__ import annotations

import asyncio

from gateway.sinkworker.batch import Batch
from gateway.sinkworker.commits import CommitTracker

A0, A1, B0 = ("events", 0), ("events", 1), ("replay", 0)


def batch(seq: int, **ranges: tuple[int, int]) -> Batch:
    named = {"a0": A0, "a1": A1, "b0": B0}
    return Batch(seq=seq, ranges={named[name]: span for name, span in ranges.items()})


def test_in_order_batches_commit_the_offset_after_each() -> None:
    tracker = CommitTracker()
    first, second = batch(0, a0=(0, 9)), batch(1, a0=(10, 19), a1=(5, 7))
    tracker.submitted(first)
    tracker.submitted(second)
    assert tracker.done(first) == {A0: 10}
    assert tracker.done(second) == {A0: 20, A1: 8}
    assert tracker.in_flight == 0


def test_a_later_batch_finishing_first_commits_nothing_until_the_earlier_is_stored() -> None:
    tracker = CommitTracker()
    batches = [batch(0, a0=(0, 9)), batch(1, a0=(10, 19), b0=(0, 3)), batch(2, a0=(20, 29))]
    for each in batches:
        tracker.submitted(each)
    assert tracker.done(batches[2]) == {}
    assert tracker.done(batches[1]) == {}
    assert tracker.in_flight == 3
    # The head's arrival releases all three at once: the furthest offset of each partition.
    assert tracker.done(batches[0]) == {A0: 30, B0: 4}
    assert tracker.in_flight == 0


def test_partitions_of_a_gap_batch_wait_even_when_unrelated() -> None:
    tracker = CommitTracker()
    head, later = batch(0, a0=(0, 0)), batch(1, a1=(0, 99))
    tracker.submitted(head)
    tracker.submitted(later)
    assert tracker.done(later) == {}  # a1 is not in the head batch, but commits stay in submission order
    assert tracker.done(head) == {A0: 1, A1: 100}


def test_wait_idle_returns_once_every_submitted_batch_is_stored() -> None:
    async def scenario() -> list[str]:
        tracker = CommitTracker()
        await asyncio.wait_for(tracker.wait_idle(), 1)  # nothing submitted: idle at once
        first, second = batch(0, a0=(0, 1)), batch(1, a0=(2, 3))
        tracker.submitted(first)
        tracker.submitted(second)
        events: list[str] = []

        async def waiter() -> None:
            await tracker.wait_idle()
            events.append("idle")

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        tracker.done(second)
        await asyncio.sleep(0)
        events.append("second stored")
        tracker.done(first)
        await asyncio.wait_for(task, 1)
        return events

    assert asyncio.run(scenario()) == ["second stored", "idle"]
