"""A clock tests advance by hand (coordinator.clock.Clock): test control stays in test code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from coordinator.tools.clock import START_EPOCH_MS, VirtualClock


class FakeClock(VirtualClock):
    """A clock tests advance by hand: sleeping tasks wake when advance() passes their wake-up time (the tools'
    virtual clock, moved by the test instead of by the sandbox)."""

    def __init__(self, start_epoch_ms: int = START_EPOCH_MS) -> None:
        super().__init__(start_epoch_ms)
        # Awaited between wake-ups so that real I/O (the journal's thread) finishes before time moves on again.
        self.settle: Callable[[], Awaitable[None]] | None = None

    def jump_wall_clock(self, delta_ms: int) -> None:
        """Moves the wall clock only, as an NTP step would; monotonic timers are unaffected."""
        self._epoch_offset_ms += delta_ms

    @property
    def sleepers(self) -> int:
        return sum(1 for _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Moves time forward, waking sleepers in wake-up order, and lets woken tasks run."""
        await self._settle()  # let what was just started reach its first sleep before time moves
        target = self._mono + seconds
        while True:
            pending = sorted((w for w in self._sleepers if not w[1].done()), key=lambda w: w[0])
            due = [w for w in pending if w[0] <= target]
            if not due:
                break
            wake_at = due[0][0]
            self._mono = max(self._mono, wake_at)
            for at, fut in due:
                if at <= wake_at and not fut.done():
                    fut.set_result(None)
            self._sleepers = [w for w in self._sleepers if not w[1].done()]
            await self._settle()
        self._mono = target
        await self._settle()

    async def _settle(self) -> None:
        if self.settle is not None:
            await self.settle()
        else:
            for _ in range(20):
                await asyncio.sleep(0)
