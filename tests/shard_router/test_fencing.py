"""Routers that learn a ring change at different moments, over real shards (issue 13's two mechanisms, made
deterministic): shards fence calls routed by a ring older than one they know, so one order still has one saga.

Each test runs twice: with fencing (the product) and with the shards' fence switched off, where the same schedule must
run the order twice. That second run is what shows the test can catch the bug it guards against.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.ring import EpochHistory, history_message
from coordinator.ring import ownership
from deploy.local import free_port
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2
from shard_router import HashRing, RouterServer, load
from shard_router.ring import epochs_cli, reload
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import running_stubs

from .conftest import write_shards

THREE = ["shard-1", "shard-2", "shard-3"]
FOUR = [*THREE, "shard-4"]
RING3, RING4 = HashRing(THREE, 1024), HashRing(FOUR, 1024)


def moving_order(prefix: str) -> str:
    """An order the fourth shard takes from one of the first three."""
    return next(o for o in (f"{prefix}-{i}" for i in range(1000)) if RING4.owner(o) == "shard-4")


class Rig:
    """Four real shards, and routers each with its own config directory (its own view of the ring)."""

    def __init__(self, tmp_path: Path, stack: contextlib.AsyncExitStack) -> None:
        self.tmp_path = tmp_path
        self.stack = stack
        self.shards: dict[str, str] = {}

    async def start_shards(self, stubs_address: str) -> None:
        for sid in FOUR:
            (self.tmp_path / sid).mkdir()
            cfg = shard_config(self.tmp_path / sid, stubs_address, shard_id=sid)
            app = await self.stack.enter_async_context(running_shard(cfg))
            self.shards[sid] = app.address

    async def router(self, name: str, *rings: list[str], epochs_file: bool = True) -> RouterServer:
        """A router whose epochs file holds one epoch per ring given (its config lists the last one)."""
        folder = self.tmp_path / name
        folder.mkdir()
        config, history = folder / "shards.toml", folder / "shards.epochs.json"
        for ring in rings:
            write_shards(
                config, [(sid, self.shards[sid]) for sid in ring], epochs_path=history if epochs_file else None
            )
        router = RouterServer(load(config, listen="127.0.0.1:0", epochs_path=history, env={}))
        await router.start()
        self.stack.push_async_callback(router.stop, 0.5)
        return router

    async def client(self, router: RouterServer) -> SagaClient:
        return await self.stack.enter_async_context(SagaClient(f"127.0.0.1:{router.port}"))

    async def sagas_of(self, order_id: str) -> dict[str, str]:
        """Shard id -> saga id of every shard holding a saga for the order (asked directly, unfenced)."""
        found = {}
        for sid, address in self.shards.items():
            async with SagaClient(address) as direct:
                try:
                    found[sid] = (await direct.get(order_id)).saga_id
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND
        return found


@contextlib.contextmanager
def fencing(on: bool) -> Iterator[None]:
    if on:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ownership, "fence", lambda *args, **kwargs: None)
        yield


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        stubs = await stack.enter_async_context(running_stubs(tmp_path / "stubs"))
        r = Rig(tmp_path, stack)
        await r.start_shards(stubs.address)
        yield r


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced"])
async def test_a_retry_through_a_router_on_the_old_ring_joins_the_saga_the_new_ring_started(
    rig: Rig, fenced: bool
) -> None:
    """Mechanism 1: router A knows the new ring and starts the order on the new shard; router B, still on the old ring,
    gets the client's retry and sends it to the order's old owner."""
    order_id = moving_order("m1")
    with fencing(fenced):
        old = await rig.router("old", THREE)  # starts first: the shards learn epoch 1 from it
        new = await rig.router("new", THREE, FOUR)  # shows every shard epoch 2; B has not read it
        assert (old.topologies.current.epoch, new.topologies.current.epoch) == (1, 2)
        first = await (await rig.client(new)).place(place_request(order_id))
        retry = await (await rig.client(old)).place(place_request(order_id))
        held = await rig.sagas_of(order_id)
    if not fenced:
        # The bug: two sagas for one order on two shards. (Both carry the same saga id, derived from the request, so
        # services that share one idempotency store would apply each step once; per-service stores would not.)
        assert len(held) == 2 and retry.saga_id == first.saga_id
        return
    assert held == {"shard-4": first.saga_id}
    assert retry.saga_id == first.saga_id and retry.status == saga_pb2.SUCCESS
    assert old.topologies.current.epoch == 2  # learnt from the shard that refused it


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced"])
async def test_a_probe_on_the_new_ring_and_a_place_on_the_old_ring_cannot_both_miss(rig: Rig, fenced: bool) -> None:
    """Mechanism 2: router A (new ring) asks the old owner, hears NOT_FOUND; before A places the order on the new
    shard, router B (old ring) places the same order on the old owner."""
    order_id = moving_order("m2")
    with fencing(fenced):
        old = await rig.router("old", THREE)
        new = await rig.router("new", THREE, FOUR)
        probed, go_on = asyncio.Event(), asyncio.Event()
        real_placement = new.router._placement

        async def placement_then_pause(*args: Any) -> str:
            shard_id = await real_placement(*args)
            probed.set()
            await go_on.wait()
            return shard_id

        new.router._placement = placement_then_pause  # type: ignore[method-assign]
        first = asyncio.ensure_future((await rig.client(new)).place(place_request(order_id)))
        await asyncio.wait_for(probed.wait(), 10)
        second = await (await rig.client(old)).place(place_request(order_id))
        go_on.set()
        answer = await first
        held = await rig.sagas_of(order_id)
    if not fenced:
        assert len(held) == 2
        return
    assert held == {"shard-4": answer.saga_id} and second.saga_id == answer.saga_id


async def test_a_router_without_any_state_learns_the_ring_from_the_shards(rig: Rig) -> None:
    """Every router may die at once: one started with only the old config and no epochs file routes by the newest
    ring a shard holds as soon as it has shown the shards its own."""
    order_id = moving_order("m3")
    await rig.router("new", THREE, FOUR)
    fresh = await rig.router("fresh", THREE, epochs_file=False)
    assert fresh.topologies.current.epoch == 2
    answer = await (await rig.client(fresh)).place(place_request(order_id))
    assert (await rig.sagas_of(order_id)) == {"shard-4": answer.saga_id}


async def test_a_shard_never_goes_back_and_refuses_a_second_placement_under_one_number(
    rig: Rig, tmp_path: Path
) -> None:
    await rig.router("new", THREE, FOUR)
    address = rig.shards["shard-1"]
    async with grpc.aio.insecure_channel(address) as channel:
        ring = ring_pb2_grpc.RingServiceStub(channel)
        held = (await ring.GetRing(ring_pb2.GetRingRequest(), timeout=10)).history
        assert [e.epoch for e in held.epochs] == [1, 2]
        other = ring_pb2.RingHistory()
        other.CopyFrom(held)
        other.epochs[1].shards.pop()  # epoch 2 without shard-4: another placement under the same number
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ring.InstallRing(ring_pb2.InstallRingRequest(history=other), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "epoch 2" in (e.value.details() or "")
        older = ring_pb2.RingHistory(epochs=[held.epochs[0]])
        kept = await ring.InstallRing(ring_pb2.InstallRingRequest(history=older), timeout=10)
        assert [e.epoch for e in kept.history.epochs] == [1, 2]  # never back to an older ring

    # A call routed by epoch 1 for an order shard-1 does not hold: refused, with the shard's epoch.
    shard_1_order = next(o for o in (f"k-{i}" for i in range(1000)) if RING3.owner(o) == "shard-1")
    async with SagaClient(address) as direct:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await direct.saga.GetSaga(
                saga_pb2.GetSagaRequest(order_id=shard_1_order), metadata=(("x-saga-ring-epoch", "1"),), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(e.value.trailing_metadata() or ()) == {"x-saga-ring-refusal": "stale", "x-saga-ring-epoch": "2"}
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await direct.saga.GetSaga(
                saga_pb2.GetSagaRequest(order_id="x"), metadata=(("x-saga-ring-epoch", "soon"),), timeout=10
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "x-saga-ring-epoch" in (e.value.details() or "")


# ---- routers that start without an epochs file (issue: a restart between a shards-file edit and `epochs commit`) ----


async def test_a_router_restarted_before_the_commit_routes_by_the_shards_ring_not_its_edited_config(rig: Rig) -> None:
    """`make run` before any commit: the routers took the config's three shards as epoch 1 and showed it to the shards.
    An operator adds shard-4 to the file and one router restarts before `epochs commit`: it must route by the shards'
    epoch 1, not take its edited config as another epoch 1 (that ring put orders on shard-4 while the other router
    put the same orders on their old owners: two sagas, two different answers)."""
    orders = [o for o in (f"r2-{i}" for i in range(400)) if RING4.owner(o) == "shard-4"][:12]
    first = await rig.router("first", THREE, epochs_file=False)
    restarted = await rig.router("restarted", FOUR, epochs_file=False)  # the edited file, no commit yet
    a, b = await rig.client(first), await rig.client(restarted)
    for order_id in orders:
        through_b = await b.place(place_request(order_id))
        through_a = await a.place(place_request(order_id))
        assert (through_a.saga_id, through_a.status) == (through_b.saga_id, through_b.status)
        held = await rig.sagas_of(order_id)
        assert held == {RING3.owner(order_id): through_a.saga_id}, order_id
    assert (first.topologies.current.epoch, restarted.topologies.current.epoch) == (1, 1)
    assert restarted.topologies.current.ring.shard_ids == tuple(THREE), "an uncommitted ring was routed by"
    async with grpc.aio.insecure_channel(rig.shards["shard-4"]) as channel:
        held4 = (await ring_pb2_grpc.RingServiceStub(channel).GetRing(ring_pb2.GetRingRequest(), timeout=10)).history
    assert all(e.epoch != 1 or len(e.shards) == 3 for e in held4.epochs), "shard-4 took an uncommitted ring"


async def test_a_fresh_shard_refuses_a_first_ring_its_peers_hold_another_placement_under(rig: Rig) -> None:
    """A router of an older build (or a forked epochs file) offers the fresh shard-4 an epoch 1 with four shards while
    the other shards hold epoch 1 with three: the fresh shard must refuse it as the others do, not adopt it."""
    await rig.router("first", THREE, epochs_file=False)
    forked = EpochHistory().advance(1024, [(sid, rig.shards[sid]) for sid in FOUR], 1)
    async with grpc.aio.insecure_channel(rig.shards["shard-4"]) as channel:
        ring = ring_pb2_grpc.RingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ring.InstallRing(ring_pb2.InstallRingRequest(history=history_message(forked)), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(e.value.trailing_metadata() or ())["x-saga-ring-refusal"] == "conflict"
        assert not (await ring.GetRing(ring_pb2.GetRingRequest(), timeout=10)).history.epochs
        # The committed ring is taken: epoch 2 extends what the peers hold.
        committed = EpochHistory().advance(1024, [(sid, rig.shards[sid]) for sid in THREE], 1)
        committed = committed.advance(1024, [(sid, rig.shards[sid]) for sid in FOUR], 2)
        kept = await ring.InstallRing(ring_pb2.InstallRingRequest(history=history_message(committed)), timeout=10)
        assert [e.epoch for e in kept.history.epochs] == [1, 2]


async def test_a_router_in_conflict_with_the_shards_creates_no_saga_until_it_agrees(rig: Rig) -> None:
    """A router whose epochs file was forked by hand (another epoch 1) is refused by the shards: it must answer
    UNAVAILABLE for new orders instead of placing them by its own ring, while it still serves reads."""
    order_id = moving_order("c1")
    first = await rig.router("first", THREE, epochs_file=False)
    forked = await rig.router("forked", FOUR)  # its file says epoch 1 is four shards
    staying = next(o for o in (f"c1-kept-{i}" for i in range(1000)) if RING4.owner(o) != "shard-4")
    placed = await (await rig.client(first)).place(place_request(staying))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await (await rig.client(forked)).place(place_request(order_id))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "epoch 1" in (e.value.details() or "") and "shard-" in (e.value.details() or "")
    assert (await rig.sagas_of(order_id)) == {}
    got = await (await rig.client(forked)).get(staying)  # reads are still served: the shard that holds it answers
    assert got.saga_id == placed.saga_id
    answer = await (await rig.client(first)).place(place_request(order_id))
    assert (await rig.sagas_of(order_id)) == {RING3.owner(order_id): answer.saga_id}


async def test_the_first_commit_shows_its_ring_to_every_shard_before_it_writes_the_file(rig: Rig) -> None:
    """Without an epochs file, `epochs commit` starts from the shards' history and shows the result to every shard
    first: a router that starts without seeing the file (a late copy) learns it from the shards."""
    await rig.router("first", THREE, epochs_file=False)
    folder = rig.tmp_path / "operator"
    folder.mkdir()
    config, history = folder / "shards.toml", folder / "shards.epochs.json"
    write_shards(config, [(sid, rig.shards[sid]) for sid in FOUR])
    args = ["commit", "--config", str(config), "--epochs", str(history)]
    assert await asyncio.to_thread(epochs_cli.main, args) == 0
    for sid in FOUR:
        async with grpc.aio.insecure_channel(rig.shards[sid]) as channel:
            held = await ring_pb2_grpc.RingServiceStub(channel).GetRing(ring_pb2.GetRingRequest(), timeout=10)
        assert [len(e.shards) for e in held.history.epochs] == [3, 4], sid
    late = await rig.router("late", FOUR, epochs_file=False)
    assert late.topologies.current.epoch == 2


async def test_without_an_epochs_file_a_router_does_not_guess_while_a_shard_cannot_be_asked(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No shard that answered holds a ring and one cannot be asked: it may hold the ring the others were routed by, so
    the router refuses to start (after FIRST_RING_WAIT_S) rather than make its config epoch 1. Once a shard that
    answers holds one, that one is used."""
    monkeypatch.setattr(reload, "FIRST_RING_WAIT_S", 0.3)
    folder = rig.tmp_path / "guess"
    folder.mkdir()
    config = folder / "shards.toml"
    write_shards(config, [(sid, rig.shards[sid]) for sid in THREE] + [("shard-9", f"127.0.0.1:{free_port()}")])
    router = RouterServer(load(config, listen="127.0.0.1:0", epochs_path=folder / "none.json", env={}))
    with pytest.raises(reload.RingChangeRefused, match="shard-9"):
        await router.start()
    await router.stop(0)
    await rig.router("first", THREE, epochs_file=False)  # the shards hold epoch 1 now
    again = RouterServer(load(config, listen="127.0.0.1:0", epochs_path=folder / "none.json", env={}))
    await again.start()
    rig.stack.push_async_callback(again.stop, 0.5)
    assert again.topologies.current.ring.shard_ids == tuple(THREE)
