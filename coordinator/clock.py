"""Time, injected: the engine, the deadline timers and the backoff read time only through a Clock.

Timers use the monotonic clock; stored times are wall-clock epoch milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""

    def now_epoch_ms(self) -> int:
        """Wall-clock time, for what is stored and shown."""

    async def sleep(self, seconds: float) -> None:
        """Sleeps on the monotonic clock."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now_epoch_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
