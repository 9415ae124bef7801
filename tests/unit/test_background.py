import asyncio

import pytest

from gateway.core.background import running


def test_the_task_runs_during_the_block_and_has_ended_after_it() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        ticks = 0
        stopped = False

        async def loop() -> None:
            nonlocal ticks, stopped
            try:
                while True:
                    ticks += 1
                    await asyncio.sleep(0)
            finally:
                stopped = True

        async with running(loop()) as task:
            for _ in range(5):
                await asyncio.sleep(0)
        return ticks, stopped, task.done()

    ticks, stopped, done = asyncio.run(scenario())
    assert ticks >= 3
    assert stopped and done


def test_an_error_in_the_block_still_stops_the_task_and_propagates() -> None:
    started: list[asyncio.Task[object]] = []

    async def scenario() -> None:
        async with running(asyncio.sleep(3600)) as task:
            started.append(task)
            await asyncio.sleep(0)
            raise LookupError("block failed")

    with pytest.raises(LookupError):
        asyncio.run(scenario())
    assert started[0].cancelled()
