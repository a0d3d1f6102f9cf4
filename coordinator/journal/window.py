"""The commit window (PostgreSQL's commit_delay, config [group_commit]): how long a group commit may wait for more
sagas' records, and the counts that decide it, in one object the engine, the shard and the writer each talk to.

- The shard counts its writers: a saga task that starts (writer_started) and ends (writer_stopped).
- The engine says when a saga rests in a retry's backoff (`with window.resting():`): it writes nothing until then.
- The journal counts submissions that end a writer's round (queued/taken): what a saga waits for before going on.

While the process has more work than CPU (the loop runs at least `busy_lag_ms` late) and at least `siblings` sagas
are writing, a commit waits up to `window_ms` until as many sagas have ended their round as are writing, so that one
fsync serves them all. Sagas that share a commit then make their calls together and come back together: commits become
rounds. Waiting then costs no latency (the sagas would have waited for CPU); an idle or lightly loaded shard, or one
whose sagas wait on slow services, never waits, and neither does a lone saga. The counts are read live: a saga that
stops writing (it ended, or went to rest) ends a wait already open rather than being waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from coordinator.config import GroupCommit
from coordinator.metrics import ShardMetrics


class CommitWindow:
    def __init__(self, cfg: GroupCommit | None = None, metrics: ShardMetrics | None = None) -> None:
        self.cfg = cfg or GroupCommit(window_ms=0)
        self._metrics = metrics
        self.writers = 0
        """Sagas writing to the journal now: saga tasks running, less those resting in a backoff (a saga waiting on an
        operation, or not yet resumed after a restart, has no task and writes nothing)."""
        self.rounds_pending = 0
        """Submissions queued that end a writer's round (Journal.submit's ends_round)."""
        self._gathering: asyncio.Future[None] | None = None
        self._lag_s = 0.0
        """How late the event loop runs (EWMA of a timer's lateness, watch_lag)."""

    @property
    def on(self) -> bool:
        return self.cfg.window_ms > 0

    # ---- the counts --------------------------------------------------------------------------------------------

    def writer_started(self) -> None:
        self.writers += 1

    def writer_stopped(self) -> None:
        self.writers -= 1
        self._recheck()

    @contextlib.contextmanager
    def resting(self) -> Iterator[None]:
        """A saga sleeping out a retry's backoff (or the shard's pause before re-driving it) is not waited for,
        including by a window already open."""
        self.writer_stopped()
        try:
            yield
        finally:
            self.writers += 1

    def queued(self, ends_round: bool) -> None:
        if ends_round:
            self.rounds_pending += 1
            self._recheck()

    def taken(self, ends_round: bool) -> None:
        self.rounds_pending -= ends_round

    def _recheck(self) -> None:
        if self._gathering is not None and self.rounds_pending >= self.writers:
            _release(self._gathering)

    # ---- the wait ------------------------------------------------------------------------------------------------

    async def gather(self) -> None:
        """Waits before a commit while the window applies (see the module's docstring); returns at once otherwise."""
        cfg = self.cfg
        if cfg.window_ms <= 0 or (cfg.busy_lag_ms > 0 and self._lag_s * 1000 < cfg.busy_lag_ms):
            return
        if self.writers < cfg.siblings or self.rounds_pending >= self.writers:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(cfg.window_ms / 1000, _release, fut)
        self._gathering = fut
        started = loop.time()
        try:
            await fut
        finally:
            timer.cancel()
            self._gathering = None
            if self._metrics is not None:
                self._metrics.commit_window_seconds.observe(loop.time() - started)

    def release(self) -> None:
        """Ends a wait now (the journal is closing)."""
        if self._gathering is not None:
            _release(self._gathering)

    @property
    def senses_lag(self) -> bool:
        """Whether watch_lag must run: the window is on and gated by the loop's lateness."""
        return self.cfg.window_ms > 0 and self.cfg.busy_lag_ms > 0

    async def watch_lag(self, interval_s: float = 0.02) -> None:
        """How late a 20 ms sleep wakes (perf_counter, an exponentially weighted mean): about 0.2 ms on an idle loop
        (libuv's timers are millisecond-grained), more when the process waits for CPU: its own ready work, or other
        processes on the cores. Only runs with the window on: 50 wake-ups a second."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval_s)
            late = max(0.0, time.perf_counter() - started - interval_s)
            self._lag_s += 0.2 * (late - self._lag_s)


def _release(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
