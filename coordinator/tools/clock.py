"""Virtual time for the definition tools: the engine's sleeps and attempt timeouts pass at once, in wake-up order.

A coordinator.clock.Clock whose time moves only when the sandbox (coordinator.tools.sandbox) finds nothing else to do:
it jumps to the earliest sleeper's wake-up time. The engine's unit tests drive the same clock by hand
(tests/helpers/clock.py). A saga whose retries span minutes runs in milliseconds, and the same
run gives the same calls every time.
"""

from __future__ import annotations

import asyncio

START_EPOCH_MS = 1_700_000_000_000
"""A fixed start, so that two runs of the same plan print the same times."""


class VirtualClock:
    def __init__(self, start_epoch_ms: int = START_EPOCH_MS) -> None:
        self._mono = 0.0
        self._epoch_offset_ms = start_epoch_ms
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._mono

    def now_epoch_ms(self) -> int:
        return self._epoch_offset_ms + int(self._mono * 1000)

    @property
    def elapsed_ms(self) -> int:
        return int(self._mono * 1000)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, fut))
        await fut

    def next_wake(self) -> float | None:
        """The monotonic time of the earliest sleeper still asleep; None if nothing sleeps."""
        self._sleepers = [s for s in self._sleepers if not s[1].done()]
        return min((at for at, _ in self._sleepers), default=None)

    def wake_next(self) -> bool:
        """Moves time to the earliest wake-up and wakes every sleeper due then; False if nothing sleeps."""
        at = self.next_wake()
        if at is None:
            return False
        self._mono = max(self._mono, at)
        for wake_at, fut in self._sleepers:
            if wake_at <= self._mono and not fut.done():
                fut.set_result(None)
        return True
