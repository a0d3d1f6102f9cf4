"""`python -m tests.helpers.shard_clockskew <coordinator args>`: a real shard (coordinator.__main__) whose wall
clock is offset by the number of milliseconds in $SAGA_CLOCK_OFFSET_FILE, re-read at most every 20 ms, so a test makes
the wall clock jump forward or back while the shard runs (libfaketime is not installed here; this is the injected
clock). Only the wall clock moves: timers run on the monotonic clock, as the coordinator's design says they must.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import coordinator.__main__ as shard_main
import coordinator.clock

_REREAD_NS = 20_000_000


def install(path: Path) -> None:
    cache = {"at_ns": 0, "offset_ms": 0}

    def offset_ms() -> int:
        now = time.monotonic_ns()
        if now - cache["at_ns"] > _REREAD_NS:
            cache["at_ns"] = now
            try:
                cache["offset_ms"] = int(path.read_text().strip() or "0")
            except (OSError, ValueError):
                pass  # keep the last offset: a file being replaced is not a jump back to zero
        return cache["offset_ms"]

    def now_epoch_ms(self: coordinator.clock.SystemClock) -> int:
        return time.time_ns() // 1_000_000 + offset_ms()

    coordinator.clock.SystemClock.now_epoch_ms = now_epoch_ms  # type: ignore[method-assign]


def write_offset(path: Path, offset_ms: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{offset_ms}\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    skew = os.environ.get("SAGA_CLOCK_OFFSET_FILE", "")
    if skew:
        install(Path(skew))
    shard_main.main()
