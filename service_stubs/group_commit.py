"""Group commit: one writer thread per process makes every store's pending rows durable, one transaction per store
per round, and wakes the waiting calls with one callback per round.

Why this shape: under load, the cost of durability is per transaction (an fsync) and per thread wake-up (a futex and
a GIL hand-over), not per row. So the event loop hands rows over at most once per loop iteration, and the single
writer takes everything that accumulated while it was busy with the previous round.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from loguru import logger

from service_stubs.errors import StoreFailed
from service_stubs.store import KeyRow, StockRow, Store


@dataclass(slots=True)
class _Pending:
    store: Store
    keys: Sequence[KeyRow]
    stock: Sequence[StockRow]
    future: asyncio.Future[None]

    @property
    def rows(self) -> int:
        return len(self.keys) + len(self.stock)


class GroupCommitter:
    """Create and use in the event loop thread; `close()` drains everything submitted before it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_batch_rows: int) -> None:
        self._loop = loop
        self._max_batch_rows = max_batch_rows
        # Loop-thread side: filled by submit(), handed to the writer once per loop iteration.
        self._outbox: list[_Pending] = []
        self._handover_scheduled = False
        # Writer side, guarded by _cond.
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="stub-group-commit", daemon=True)
        self._thread.start()

    def submit(self, store: Store, keys: Sequence[KeyRow], stock: Sequence[StockRow]) -> asyncio.Future[None]:
        """Queues rows for `store`; the future resolves once they are committed (or fails with StoreFailed)."""
        if self._closing:
            raise StoreFailed(f"{store.path.name}: the stub is stopping")
        future = self._loop.create_future()
        self._outbox.append(_Pending(store, keys, stock, future))
        if not self._handover_scheduled:
            self._handover_scheduled = True
            self._loop.call_soon(self._hand_over)
        return future

    async def close(self) -> None:
        """Commits everything submitted so far, then stops the writer thread."""
        self._hand_over()
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)

    def _hand_over(self) -> None:
        self._handover_scheduled = False
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        with self._cond:
            self._queue.extend(outbox)
            self._cond.notify()

    def _take_round(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            taken: list[_Pending] = []
            rows = 0
            # At least one request per round, even one larger than the bound, so nothing waits forever.
            while self._queue and (not taken or rows + self._queue[0].rows <= self._max_batch_rows):
                item = self._queue.popleft()
                taken.append(item)
                rows += item.rows
            return taken

    def _run(self) -> None:
        while (taken := self._take_round()) is not None:
            errors: dict[Store, str] = {}
            by_store: dict[Store, list[_Pending]] = {}
            for item in taken:
                by_store.setdefault(item.store, []).append(item)
            for store, items in by_store.items():
                errors_for = self._commit_store(store, items)
                if errors_for is not None:
                    errors[store] = errors_for
            try:
                self._loop.call_soon_threadsafe(_resolve, taken, errors)
            except RuntimeError:  # the loop is gone (process exiting); the rows are durable regardless
                return

    @staticmethod
    def _commit_store(store: Store, items: list[_Pending]) -> str | None:
        if store.failure is not None:
            return store.failure
        keys = [row for item in items for row in item.keys]
        stock = [row for item in items for row in item.stock]
        try:
            store.write(keys, stock)
        except Exception as e:  # memory is now ahead of disk for this store: stop committing to it for good
            store.failure = f"{store.path.name}: commit failed: {e!r}"
            logger.error("stub store failed, its service answers UNAVAILABLE until restarted: {}", store.failure)
            return store.failure
        return None


def _resolve(taken: list[_Pending], errors: dict[Store, str]) -> None:
    for item in taken:
        if item.future.done():  # the caller was cancelled (deadline); its rows are durable all the same
            continue
        error = errors.get(item.store)
        if error is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(StoreFailed(error))
