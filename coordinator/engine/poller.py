"""Sagas waiting on long-running operations, asked about at their due times.

A waiting saga has no task of its own: it is one entry (due time, saga) in a heap, and one task per shard sleeps
until the earliest due time. Due polls run at most `max_concurrent` at once; each asks the service once (Engine.poll)
and either puts the saga back with its next due time or hands it to be driven on. Ten thousand waiting sagas are ten
thousand heap entries: between polls nothing runs.

Due times are the journaled ones (the "accepted" and "polled" events), so a restarted shard asks when the old one
would have; the shard spreads the polls that fell due while it was down (Shard.start), so a restart does not call the
services all at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable

from loguru import logger

from coordinator.clock import Clock
from coordinator.engine.engine import SagaRun


class Poller:
    def __init__(
        self,
        clock: Clock,
        poll: Callable[[SagaRun], Awaitable[int | None]],
        resume: Callable[[SagaRun], None],
        max_concurrent: int,
    ) -> None:
        """poll(run): asks once; returns the next due time (epoch ms), or None when the saga is to be driven on, which
        resume(run) does."""
        self._clock = clock
        self._poll = poll
        self._resume = resume
        self._slots = asyncio.Semaphore(max_concurrent)
        self._heap: list[tuple[int, int, SagaRun]] = []
        self._queued: set[int] = set()
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._asking: dict[int, SagaRun] = {}
        """Sagas being asked about now (out of the heap until their poll ends)."""

    def add(self, run: SagaRun, due_epoch_ms: int) -> None:
        """Asks about run's operation at due_epoch_ms (at once if past). A saga is queued once at most."""
        if id(run) in self._queued:
            return
        self._queued.add(id(run))
        heapq.heappush(self._heap, (due_epoch_ms, next(self._order), run))
        if self._heap[0][2] is run:
            self._wake.set()  # it is now the earliest: the sleeping loop must wake sooner

    def waiting(self) -> list[SagaRun]:
        """Sagas waiting (queued or being asked now). Safe from another thread (the metrics endpoint): both are copied
        in one C call each before anything is read from them."""
        heap, asking = list(self._heap), list(self._asking.values())
        return [entry[2] for entry in heap] + asking

    def __len__(self) -> int:
        return len(self._heap) + len(self._polls)

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="operation-poller")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._polls) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, run = self._heap[0]
            delay_s = (due - self._clock.now_epoch_ms()) / 1000
            if delay_s > 0:
                self._wake.clear()
                await self._sleep_or_wake(delay_s)
                continue
            await self._slots.acquire()  # bounded: the heap keeps the rest in due order meanwhile
            # While waiting for the slot the heap may have changed (a saga put back, due earlier): take its head now,
            # if that is still due.
            if not self._heap or self._heap[0][0] > self._clock.now_epoch_ms():
                self._slots.release()
                continue
            _, _, run = heapq.heappop(self._heap)
            self._queued.discard(id(run))
            self._asking[id(run)] = run
            task = asyncio.create_task(self._ask(run), name=f"poll:{run.record.order_id}")
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    async def _sleep_or_wake(self, delay_s: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(delay_s))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _ask(self, run: SagaRun) -> None:
        try:
            due = await self._poll(run)
        except Exception:
            # A journal failure or a bug: the saga's driver re-reads it from the journal and brings it back here.
            logger.exception("polling the operation of order {} failed; handing it to its driver", run.record.order_id)
            due = None
        finally:
            self._asking.pop(id(run), None)
            self._slots.release()
        if due is None:
            self._resume(run)
        else:
            self.add(run, due)
