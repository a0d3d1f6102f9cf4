"""The poller's own rules, with a fake clock and fake polls (the shard's use of it is tested in test_operations)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from coordinator.engine.poller import Poller

NOW = 1_000_000


class FixedClock:
    def now_epoch_ms(self) -> int:
        return NOW

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def saga(name: str) -> Any:
    return types.SimpleNamespace(name=name, record=types.SimpleNamespace(order_id=name))


async def _until(cond: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"not within {timeout_s} s")


async def test_a_saga_queued_earlier_while_the_slots_are_busy_is_asked_once_and_none_is_lost() -> None:
    """All slots busy; B falls due, then C is put back due before B. Each is asked once, and the one asked is the
    one taken off the heap (before the fix: C was dropped and B asked twice)."""
    gate = asyncio.Event()
    asked: list[str] = []
    resumed: list[str] = []

    async def poll(run: Any) -> int | None:
        asked.append(run.name)
        if run.name == "A":
            await gate.wait()
        return None

    poller = Poller(FixedClock(), poll, lambda run: resumed.append(run.name), max_concurrent=1)  # type: ignore[arg-type]
    a, b, c = saga("A"), saga("B"), saga("C")
    poller.add(a, 0)
    poller.start()
    try:
        await _until(lambda: asked == ["A"])
        poller.add(b, NOW - 10)
        await asyncio.sleep(0.05)  # the loop now waits for the only slot, with B at the head
        poller.add(c, NOW - 20)
        assert {r.name for r in poller.waiting()} == {"A", "B", "C"}  # the one being asked counts as waiting
        gate.set()
        await _until(lambda: len(resumed) == 3)
        await asyncio.sleep(0.05)
        assert sorted(asked) == ["A", "B", "C"] and sorted(resumed) == ["A", "B", "C"]
        assert asked == ["A", "C", "B"]  # due order
        assert poller.waiting() == [] and len(poller) == 0
    finally:
        await poller.stop()


async def test_polls_run_at_most_max_concurrent_at_once() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def poll(run: Any) -> int | None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return None

    done: list[str] = []
    poller = Poller(FixedClock(), poll, lambda run: done.append(run.name), max_concurrent=3)  # type: ignore[arg-type]
    for i in range(10):
        poller.add(saga(f"s{i}"), NOW - i)
    poller.start()
    try:
        await _until(lambda: running == 3)
        await asyncio.sleep(0.05)
        assert peak == 3 and len(poller.waiting()) == 10
        release.set()
        await _until(lambda: len(done) == 10)
        assert peak == 3
    finally:
        await poller.stop()
