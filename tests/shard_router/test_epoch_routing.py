"""DESIGN contract 7 across a re-shard: an order an earlier ring placed is found on its old owner, never run twice."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from protos.saga.v1 import saga_pb2
from shard_router import HashRing
from shard_router.ring import epochs_cli

from .conftest import Cluster, eventually, order

THREE = ["shard-1", "shard-2", "shard-3"]
RING3 = HashRing(THREE, 1024)
RING4 = HashRing([*THREE, "shard-4"], 1024)
ORDERS = [f"o-{i}" for i in range(200)]
MOVED = [o for o in ORDERS if RING4.owner(o) == "shard-4"]


async def _resharded(cluster: Cluster) -> None:
    """Three shards holding ORDERS as the first ring placed them, then a fourth shard added to the config."""
    for sid in THREE:
        await cluster.add_shard(sid)
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for i, order_id in enumerate(ORDERS):
        cluster.shards[RING3.owner(order_id)].add_saga(order_id, created_ns=an_hour_ago + i)
    router = await cluster.start_router()
    await cluster.add_shard("shard-4")
    cluster.write_config()
    assert await router.reload()
    assert router.topologies.current.epoch == 2


async def test_orders_placed_before_a_new_shard_are_found_on_their_old_owner(cluster: Cluster) -> None:
    await _resharded(cluster)
    assert 30 <= len(MOVED) <= 70
    coordinator, _ = cluster.stubs(cluster.routers[0])
    for order_id in MOVED:
        saga = await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id=order_id), timeout=5)
        assert saga.shard_id == RING3.owner(order_id)
        retry = await coordinator.PlaceOrder(order(order_id), timeout=5)  # a client retry after the re-shard
        assert retry.saga_id == f"saga-{order_id}"
    new_shard = cluster.shards["shard-4"]
    assert not new_shard.sagas and not new_shard.calls_to("PlaceOrder")
    watched = [u async for u in coordinator.WatchSaga(saga_pb2.WatchSagaRequest(order_id=MOVED[0]), timeout=5)]
    assert watched[0].saga.shard_id == RING3.owner(MOVED[0])

    fresh = next(o for o in (f"new-{i}" for i in range(100)) if RING4.owner(o) == "shard-4")
    await coordinator.PlaceOrder(order(fresh), timeout=5)
    assert fresh in new_shard.sagas


async def test_a_restarted_router_still_knows_the_earlier_ring(cluster: Cluster) -> None:
    await _resharded(cluster)
    await cluster.routers[0].stop(0)
    router = await cluster.start_router()
    assert router.topologies.current.epoch == 2 and [n for n, _ in router.topologies.current.older] == [1]
    coordinator, _ = cluster.stubs(router)
    await coordinator.PlaceOrder(order(MOVED[0]), timeout=5)
    assert not cluster.shards["shard-4"].sagas


async def test_an_old_owner_that_does_not_answer_blocks_placing_elsewhere(cluster: Cluster) -> None:
    await _resharded(cluster)
    coordinator, _ = cluster.stubs(cluster.routers[0])
    order_id = next(o for o in MOVED if RING3.owner(o) == "shard-1")
    await cluster.shards["shard-1"].stop()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coordinator.PlaceOrder(order(order_id), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "may already be on shard shard-1" in e.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id=order_id), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not cluster.shards["shard-4"].calls_to("PlaceOrder")


async def test_a_retry_during_the_ring_change_joins_the_call_in_flight(cluster: Cluster) -> None:
    for sid in THREE:
        await cluster.add_shard(sid)
    order_id = MOVED[0]
    old_owner = cluster.shards[RING3.owner(order_id)]
    old_owner.place_delay_s = 1.0  # the saga becomes visible on its shard only after a while
    router = await cluster.start_router()
    coordinator, _ = cluster.stubs(router)
    first = asyncio.ensure_future(coordinator.PlaceOrder(order(order_id), timeout=10))
    await eventually(lambda: len(old_owner.calls_to("PlaceOrder")) == 1)
    await cluster.add_shard("shard-4")
    cluster.write_config()
    assert await router.reload()
    # The old owner would still answer NOT_FOUND to a probe: only the router's memory of the call in flight helps.
    retry = await coordinator.PlaceOrder(order(order_id), timeout=10)
    assert retry.saga_id == (await first).saga_id
    assert not cluster.shards["shard-4"].calls_to("PlaceOrder")
    assert len(old_owner.calls_to("PlaceOrder")) == 2


async def test_epochs_are_dropped_only_once_no_saga_needs_them(cluster: Cluster) -> None:
    await _resharded(cluster)
    router = cluster.routers[0]
    moved = cluster.shards[RING3.owner(MOVED[0])].sagas[MOVED[0]]
    moved.state = saga_pb2.SAGA_STATE_RUNNING
    args = ["drop", "--through", "1", "--config", str(cluster.config_path), "--epochs", str(cluster.epochs_path)]

    assert await asyncio.to_thread(epochs_cli.main, [*args, "--retry-window-s", "60"]) == 1  # an unfinished saga
    moved.state = saga_pb2.SAGA_STATE_SUCCEEDED
    assert await asyncio.to_thread(epochs_cli.main, args) == 1  # finished, but within the default retry window (1 day)
    assert await asyncio.to_thread(epochs_cli.main, [*args, "--retry-window-s", "60"]) == 0  # an hour old: safe

    assert await router.reload()
    assert router.topologies.current.older == ()
    coordinator, _ = cluster.stubs(router)
    with pytest.raises(grpc.aio.AioRpcError) as e:  # forgotten: exactly what the check made sure nobody needs
        await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id=MOVED[0]), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert await asyncio.to_thread(epochs_cli.main, ["list", "--config", str(cluster.config_path)]) == 0


async def test_a_start_saga_after_a_reshard_asks_old_owners_by_type_and_key(cluster: Cluster) -> None:
    await _resharded(cluster)  # the old owners hold ORDERS as order-flow sagas
    coordinator, _ = cluster.stubs(cluster.routers[0])
    key = MOVED[0]
    old = cluster.shards[RING3.owner(key)]
    # The return flow of an order whose order-flow saga is on its old owner is another saga: it starts on the new owner.
    started = await coordinator.StartSaga(saga_pb2.StartSagaRequest(saga_type="returns", key=key), timeout=5)
    assert f"returns/{key}" in cluster.shards["shard-4"].sagas and started.saga_id == f"saga-returns/{key}"
    assert [c.order_id for c in old.calls_to("GetSaga")] == [f"returns/{key}"]  # probed by type and key
    # The order flow of that key, started by StartSaga, joins the saga PlaceOrder made on the old owner.
    joined = await coordinator.StartSaga(saga_pb2.StartSagaRequest(saga_type="order", key=key), timeout=5)
    assert joined.saga_id == f"saga-{key}" and old.calls_to("StartSaga")
    got = await coordinator.GetSaga(saga_pb2.GetSagaRequest(saga_type="returns", key=key), timeout=5)
    assert got.shard_id == "shard-4"
