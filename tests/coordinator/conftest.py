"""Fixtures for the coordinator's tests: an in-process shard over a real journal file with a fake caller and clock."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import Limits, RetryPolicy, ShardConfig
from coordinator.security.sealing import open_sealer
from coordinator.shard import Shard
from protos.saga.v1 import saga_pb2
from tests.helpers.clock import FakeClock

from .fakes import FakeCaller, ObservedJournal

FAST_FORWARD = RetryPolicy(max_attempts=4, initial_backoff_ms=10, max_backoff_ms=100, attempt_timeout_ms=1000)
FAST_COMPENSATE = RetryPolicy(max_attempts=5, initial_backoff_ms=10, max_backoff_ms=100, attempt_timeout_ms=1000)


def order(order_id: str = "o-1", token: str = "tok_ok", **kw: Any) -> saga_pb2.PlaceOrderRequest:
    return saga_pb2.PlaceOrderRequest(
        order_id=order_id,
        user_id=kw.pop("user_id", "u-1"),
        items=kw.pop("items", [saga_pb2.Item(item_id="sku-1", quantity=2)]),
        payment_info=saga_pb2.PaymentInfo(payment_token=token, amount_cents=kw.pop("amount", 1999), currency="EUR"),
        **kw,
    )


class Harness:
    """Builds shards over one journal file, as a restarted process would."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "shard.db")
        self.clock = FakeClock()
        self.caller = FakeCaller(self.clock)
        self.cfg = ShardConfig(
            journal_path=self.path,
            forward=FAST_FORWARD,
            compensate=FAST_COMPENSATE,
            default_ttl_ms=30_000,
            limits=Limits(max_in_flight=100),
            seed=7,
        )
        self.shard: Shard | None = None
        self.journal: ObservedJournal | None = None
        self.clock.settle = self.quiesce

    async def quiesce(self, limit_s: float = 60.0) -> None:
        """Returns once every task is blocked on the fake clock: the journal is idle and stays so. Bounded by wall
        time, generously: the journal's commits are real fsyncs, slow on a machine busy with other work."""
        idle_rounds = 0
        give_up = time.monotonic() + limit_s
        while time.monotonic() < give_up:
            for _ in range(5):
                await asyncio.sleep(0)
            if self.journal is None or self.journal.idle:
                idle_rounds += 1
                if idle_rounds >= 3:
                    return
            else:
                idle_rounds = 0
                await asyncio.sleep(0.0005)
        raise AssertionError(f"the shard never went idle within {limit_s} s")

    async def start(self, **cfg: Any) -> Shard:
        if cfg:
            self.cfg = dataclasses.replace(self.cfg, **cfg)
        self.journal = ObservedJournal(self.path)
        await self.journal.open()
        sealer = await open_sealer(self.cfg, self.journal)
        self.shard = Shard(self.cfg, self.journal, self.caller, self.clock, sealer, random.Random(7))
        await self.shard.start()
        return self.shard

    async def stop(self) -> None:
        if self.shard is not None:
            await self.shard.stop()
        if self.journal is not None:
            await self.journal.close()
        self.shard = self.journal = None

    async def restart(self, **cfg: Any) -> Shard:
        await self.stop()
        return await self.start(**cfg)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.start()
    yield h
    await h.stop()
