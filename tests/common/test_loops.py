"""common.loops.run_every, driven by a fake clock: runs on time, survives failures, stops on cancel."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import pytest
from loguru import logger

from common import logs
from common.loops import run_every


class FakeSleep:
    """A sleep that returns when the test advances it: each call waits for one advance()."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self._wakeups: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await self._wakeups.get()

    async def advance(self) -> None:
        self._wakeups.put_nowait(None)
        for _ in range(5):  # let the loop run its body and reach the next sleep
            await asyncio.sleep(0)


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup("test", sink=out)
    yield out
    logger.remove()


async def test_runs_every_interval_and_survives_failures(log: io.StringIO) -> None:
    runs: list[int] = []

    async def body() -> None:
        runs.append(len(runs))
        if len(runs) in (1, 3):
            raise ValueError(f"round {len(runs)} broke")

    sleep = FakeSleep()
    task = asyncio.create_task(run_every(2.5, body, name="health round", sleep=sleep))
    for _ in range(4):
        await asyncio.sleep(0)
    assert runs == [0] and sleep.calls == [2.5]  # body first, then the pause
    for _ in range(4):
        await sleep.advance()
    assert len(runs) == 5 and sleep.calls == [2.5] * 5
    text = log.getvalue()
    assert text.count("health round failed; next run in 2.5 s") == 2
    assert "ValueError: round 1 broke" in text and "ValueError: round 3 broke" in text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wait_first_sleeps_before_the_first_run(log: io.StringIO) -> None:
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1

    sleep = FakeSleep()
    task = asyncio.create_task(run_every(1.0, body, name="redrive", sleep=sleep, wait_first=True))
    for _ in range(4):
        await asyncio.sleep(0)
    assert runs == 0 and sleep.calls == [1.0]
    await sleep.advance()
    assert runs == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_during_the_body_ends_the_loop_quietly(log: io.StringIO) -> None:
    entered = asyncio.Event()

    async def body() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(run_every(1.0, body, name="stuck", sleep=FakeSleep()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and "failed" not in log.getvalue()


@pytest.mark.parametrize("interval_s", [0.0, -1.0, float("nan")])
async def test_refuses_an_interval_that_would_spin(interval_s: float) -> None:
    async def body() -> None:
        raise AssertionError("must not run")

    with pytest.raises(ValueError, match="interval_s must be > 0"):
        await run_every(interval_s, body, name="spin")
