"""A supervised periodic loop: the shape of every "check, log, sleep, forever" task a process runs in the background.

Contract: run_every(interval_s, body, name=...) awaits body() then sleep(interval_s), forever (wait_first: the sleep
comes first). An exception from body() is logged with its traceback, naming the loop, and the loop goes on: the next
run is one interval later, so a bug or a sick dependency cannot end the task or make it spin. Cancelling the task that
runs it ends it, from body() or from the sleep alike (CancelledError propagates; nothing else is left running). It never
returns otherwise. `sleep` is injected: the real one is asyncio.sleep; a fake clock's sleep lets a test drive the loop
without waiting; any awaitable pause works (e.g. "until an event is set or the interval passes").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn

from loguru import logger

Sleep = Callable[[float], Awaitable[object]]
"""Pauses for (at most) the given number of seconds."""


async def run_every(
    interval_s: float,
    body: Callable[[], Awaitable[object]],
    *,
    name: str,
    sleep: Sleep = asyncio.sleep,
    wait_first: bool = False,
) -> NoReturn:
    """Runs body() every interval_s seconds until cancelled; `name` says which loop failed in the log."""
    if not interval_s > 0:  # also refuses NaN
        raise ValueError(f"{name}: interval_s must be > 0, got {interval_s!r}")
    if wait_first:
        await sleep(interval_s)
    while True:
        try:
            await body()
        except Exception:  # CancelledError is not an Exception: a cancel still ends the loop
            logger.exception("{} failed; next run in {} s", name, interval_s)
        await sleep(interval_s)
