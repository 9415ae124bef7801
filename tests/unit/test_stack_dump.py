import asyncio
import logging
import os
import signal
import threading

import pytest
import uvloop

from gateway.core import stack_dump


async def parked_inside(event: asyncio.Event) -> None:
    await event.wait()


async def awaiting_a_helper(event: asyncio.Event) -> None:
    await parked_inside(event)


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_sigusr2_logs_each_task_down_to_its_innermost_await_and_each_thread(
    new_loop: type[asyncio.AbstractEventLoop], caplog: pytest.LogCaptureFixture
) -> None:
    blocked, release = threading.Event(), threading.Event()

    def stuck_thread() -> None:
        blocked.set()
        release.wait()

    async def scenario() -> None:
        stack_dump.install(asyncio.get_running_loop())
        event = asyncio.Event()
        task = asyncio.create_task(awaiting_a_helper(event), name="parked-task")
        await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGUSR2)
        for _ in range(100):
            if caplog.records:
                break
            await asyncio.sleep(0.01)
        event.set()
        await task
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR2)

    thread = threading.Thread(target=stuck_thread, name="stuck-thread")
    thread.start()
    blocked.wait()
    try:
        with caplog.at_level(logging.WARNING, logger=stack_dump.__name__), asyncio.Runner(loop_factory=new_loop) as r:
            r.run(scenario())
    finally:
        release.set()
        thread.join()
    [record] = caplog.records
    dump = record.getMessage()
    assert dump.startswith("stack dump on SIGUSR2:\n")
    task = dump[dump.index("task parked-task:"):]
    # Outermost first, down to the coroutine that is parked and the future it waits for.
    assert task.index("in awaiting_a_helper") < task.index("in parked_inside") < task.index("in wait")
    assert "waiting for <Future pending" in task
    assert "thread stuck-thread:" in dump and "in stuck_thread" in dump
