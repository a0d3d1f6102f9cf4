"""Store.barrier: a read waits for everything committed before it, and is answered even when the call that made the
commit it waits on gives up meanwhile (its deadline, or a shard killed mid-call, cancels that call and its commit's
future)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from service_stubs.store import KeyRow, StockRow, Store


class HeldCommitter:
    """A committer whose commits resolve only when the test says so."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def submit(self, store: Store, keys: Sequence[KeyRow], stock: Sequence[StockRow]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


async def test_a_barrier_outlives_the_cancellation_of_the_commit_it_waits_on(tmp_path: Path) -> None:
    store, _ = await asyncio.to_thread(Store.open, tmp_path / "inventory.db")
    committer = HeldCommitter()
    store.attach(committer)
    try:
        commit = store.commit([], [("sku", 1)])
        read = asyncio.create_task(store.barrier())
        await asyncio.sleep(0)  # the read now waits on the commit
        commit.cancel()  # the call that made it is cancelled, and with it the future it awaited
        for _ in range(5):
            await asyncio.sleep(0)
        assert not read.done(), "the read gave up (or answered) before anything was durable"
        # It waits behind a commit of its own instead, and answers once that is durable.
        assert len(committer.futures) == 2
        committer.futures[1].set_result(None)
        await asyncio.wait_for(read, 10)
    finally:
        await asyncio.to_thread(store.close)


async def test_a_barrier_still_reports_a_failed_store(tmp_path: Path) -> None:
    store, _ = await asyncio.to_thread(Store.open, tmp_path / "inventory.db")
    committer = HeldCommitter()
    store.attach(committer)
    try:
        commit = store.commit([], [("sku", 1)])
        commit.add_done_callback(lambda f: f.exception())  # its caller would have seen it
        read = asyncio.create_task(store.barrier())
        await asyncio.sleep(0)
        commit.set_exception(RuntimeError("disk gone"))
        try:
            await asyncio.wait_for(read, 10)
        except RuntimeError as e:
            assert "disk gone" in str(e)
        else:
            raise AssertionError("the barrier did not report the failed commit")
    finally:
        await asyncio.to_thread(store.close)
