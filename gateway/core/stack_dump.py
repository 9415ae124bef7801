"""`kill -USR2 PID`: log where every asyncio task and every thread is waiting, for a process that looks stuck.

One warning record holds the dump. A task's stack is followed through the coroutines it awaits down to
the future it waits for (asyncio's own `Task.get_stack` shows only the outermost coroutine).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Dump the stacks on SIGUSR2 (from the loop, between callbacks)."""
    loop.add_signal_handler(signal.SIGUSR2, lambda: log.warning("stack dump on SIGUSR2:\n%s", stacks()))


def stacks() -> str:
    """Every task of the running loop (if any) and every thread, most recent call last."""
    parts = []
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop
        tasks = set()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        lines = [_line(frame) for frame in _awaited_frames(task.get_coro())]
        waiting = getattr(task, "_fut_waiter", None)  # what the innermost await is parked on
        if waiting is not None:
            lines.append(f"    waiting for {waiting!r}")
        parts.append(f"task {task.get_name()}:\n" + "\n".join(lines))
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines = [line.rstrip("\n") for line in traceback.format_stack(frame)]
        parts.append(f"thread {names.get(ident, ident)}:\n" + "\n".join(lines))
    return "\n".join(parts)


def _awaited_frames(coroutine: Any) -> list[FrameType]:
    """The frames of a coroutine and of those it awaits, outermost first."""
    frames = []
    while coroutine is not None:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    return frames


def _line(frame: FrameType) -> str:
    return f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}'
