"""Recovery at size: a restarted shard registers every unfinished saga at once but starts them at a bounded rate."""

from __future__ import annotations

import asyncio
import dataclasses

from coordinator.saga.model import Action, SagaState
from tests.helpers.order_flow import CREATE_ORDER

from .conftest import Harness, order


async def test_a_restart_resumes_unfinished_sagas_at_the_configured_rate(harness: Harness) -> None:
    shard = harness.shard
    assert shard is not None
    harness.caller.hang(CREATE_ORDER, Action.FORWARD)
    ids = [f"r-{i}" for i in range(60)]
    for oid in ids:
        await shard.place_order(order(oid, no_wait=True))
    await harness.quiesce()
    harness.caller.scripts.clear()
    limits = dataclasses.replace(harness.cfg.limits, resume_per_s=100)  # 10 every 0.1 s
    # Each resumed saga's interrupted attempt is spent and the next one waits its backoff: none here, so the calls
    # show the resume rate alone.
    forward = dataclasses.replace(harness.cfg.forward, initial_backoff_ms=0, max_backoff_ms=0)
    shard = await harness.restart(limits=limits, default_ttl_ms=3_600_000, forward=forward)
    before = len(harness.caller.calls)

    def started() -> int:
        return len({c.order_id for c in harness.caller.calls[before:]})

    assert shard.in_flight == 60  # all registered: a retried PlaceOrder joins its saga, none starts twice
    await harness.quiesce()
    assert started() == 10
    joiner = asyncio.create_task(shard.place_order(order("r-59")))
    await harness.clock.advance(0.1)
    assert started() == 20
    await harness.clock.advance(0.2)
    assert started() == 40
    await harness.clock.advance(1.0)
    assert started() == 60
    placed = await joiner
    assert placed.saga.state is SagaState.SUCCEEDED
    assert len([c for c in harness.caller.calls if c.order_id == "r-59" and c.step == CREATE_ORDER]) == 2
