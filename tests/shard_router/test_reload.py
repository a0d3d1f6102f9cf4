"""Installing rings live: a file edit adds a shard without a restart or a dropped call; bad edits keep the old ring."""

from __future__ import annotations

import asyncio

import pytest

from protos.saga.v1 import saga_pb2
from shard_router import HashRing

from .conftest import Cluster, eventually, order

THREE = ["shard-1", "shard-2", "shard-3"]


async def test_an_edit_adds_a_shard_without_a_restart_or_a_dropped_call(cluster: Cluster) -> None:
    for sid in THREE:
        (await cluster.add_shard(sid)).place_delay_s = 0.5
    router = await cluster.start_router()
    coordinator, _ = cluster.stubs(router)
    in_flight = [asyncio.ensure_future(coordinator.PlaceOrder(order(f"slow-{i}"), timeout=10)) for i in range(30)]
    await eventually(lambda: sum(len(s.calls_to("PlaceOrder")) for s in cluster.shards.values()) == 30)

    await cluster.add_shard("shard-4")
    cluster.write_config()  # now lists four shards; the router polls the file every 0.1 s here
    await eventually(lambda: router.topologies.current.epoch == 2)
    assert not any(t.done() for t in in_flight), "the calls were meant to straddle the reload"

    replies = await asyncio.gather(*in_flight)
    assert all(r.status == saga_pb2.SUCCESS for r in replies)
    ring3 = HashRing(THREE, 1024)
    for i in range(30):  # each ran on the shard that owned it when it started
        assert f"slow-{i}" in cluster.shards[ring3.owner(f"slow-{i}")].sagas

    ring4 = HashRing([*THREE, "shard-4"], 1024)
    fresh = [f"fresh-{i}" for i in range(40)]
    await asyncio.gather(*(coordinator.PlaceOrder(order(o), timeout=10) for o in fresh))
    assert {o for o in fresh if ring4.owner(o) == "shard-4"} == set(cluster.shards["shard-4"].sagas)
    assert cluster.shards["shard-4"].sagas


async def test_a_bad_edit_keeps_the_old_ring(cluster: Cluster) -> None:
    for sid in THREE:
        await cluster.add_shard(sid)
    router = await cluster.start_router()
    coordinator, _ = cluster.stubs(router)
    cluster.config_path.write_text("[[shards]]\nid = 'shard-1'\naddress = 'no port'\n")
    assert not await router.reload()
    assert router.topologies.current.epoch == 1 and router.topologies.current.ring.shard_ids == tuple(THREE)
    assert (await coordinator.PlaceOrder(order("o-1"), timeout=5)).status == saga_pb2.SUCCESS


async def test_removing_a_shard_is_refused_while_it_has_unfinished_sagas(cluster: Cluster) -> None:
    for sid in THREE:
        await cluster.add_shard(sid)
    busy = next(o for o in (f"o-{i}" for i in range(100)) if HashRing(THREE, 1024).owner(o) == "shard-3")
    running = cluster.shards["shard-3"].add_saga(busy, state=saga_pb2.SAGA_STATE_RUNNING)
    router = await cluster.start_router()
    cluster.write_config(["shard-1", "shard-2"])
    assert not await router.reload()
    assert router.topologies.current.epoch == 1

    running.state = saga_pb2.SAGA_STATE_SUCCEEDED
    assert await router.reload()
    topo = router.topologies.current
    assert topo.epoch == 2 and topo.ring.shard_ids == ("shard-1", "shard-2")
    # shard-3 left the ring, but epoch 1 still sends its orders' questions to it
    assert "shard-3" in topo.shard_ids
    coordinator, _ = cluster.stubs(router)
    assert (await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id=busy), timeout=5)).shard_id == "shard-3"


async def test_removing_an_unreachable_shard_is_refused(cluster: Cluster) -> None:
    for sid in THREE:
        await cluster.add_shard(sid)
    router = await cluster.start_router()
    await cluster.shards["shard-3"].stop()
    cluster.write_config(["shard-1", "shard-2"])
    assert not await router.reload()
    assert router.topologies.current.epoch == 1


async def test_a_draining_shard_gets_no_new_orders_but_keeps_its_own(cluster: Cluster) -> None:
    for sid in THREE:
        await cluster.add_shard(sid)
    old_on_3 = next(o for o in (f"o-{i}" for i in range(100)) if HashRing(THREE, 1024).owner(o) == "shard-3")
    cluster.shards["shard-3"].add_saga(old_on_3)
    router = await cluster.start_router()
    coordinator, _ = cluster.stubs(router)
    cluster.write_config(draining=["shard-3"])
    assert await router.reload()
    assert router.topologies.current.ring.shard_ids == ("shard-1", "shard-2")
    await asyncio.gather(*(coordinator.PlaceOrder(order(f"n-{i}"), timeout=5) for i in range(30)))
    assert not cluster.shards["shard-3"].calls_to("PlaceOrder")
    saga = await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id=old_on_3), timeout=5)
    assert saga.shard_id == "shard-3"


@pytest.mark.parametrize("edit", ["touch", "rewrite"])
async def test_unchanged_files_do_not_start_an_epoch(cluster: Cluster, edit: str) -> None:
    for sid in THREE:
        await cluster.add_shard(sid)
    router = await cluster.start_router()
    if edit == "touch":
        cluster.config_path.touch()
    else:
        cluster.config_path.write_text(cluster.config_path.read_text())
    assert await router.reload()
    assert router.topologies.current.epoch == 1
