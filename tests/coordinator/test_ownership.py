"""A shard's fencing (coordinator.ring.ownership) over gRPC: which calls it refuses for their ring epoch, and that the
ring it acknowledged survives a restart (a shard that forgot it would accept the older ring's calls again)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.ring import EpochHistory, history_message
from coordinator.operations import restore
from deploy.local import free_port
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import running_stubs

SHARD = "shard-a"
# Epoch 1: shard-a alone. Epoch 2: shard-a and shard-b.
HISTORY = (
    EpochHistory()
    .advance(64, [(SHARD, "127.0.0.1:1")], 1)
    .advance(64, [(SHARD, "127.0.0.1:1"), ("shard-b", "127.0.0.1:2")], 2)
)
EPOCH2 = HISTORY.current
assert EPOCH2 is not None
MINE = next(o for o in (f"a-{i}" for i in range(1000)) if EPOCH2.ring.owner(o) == SHARD)
THEIRS = next(o for o in (f"b-{i}" for i in range(1000)) if EPOCH2.ring.owner(o) == "shard-b")


def routed(epoch: int) -> tuple[tuple[str, str], ...]:
    return (("x-saga-ring-epoch", str(epoch)),)


@pytest.fixture
async def stubs(tmp_path: Path) -> AsyncIterator[str]:
    async with running_stubs(tmp_path / "stubs") as s:
        yield s.address


@contextlib.asynccontextmanager
async def shard(tmp_path: Path, stubs: str) -> AsyncIterator[tuple[SagaClient, ring_pb2_grpc.RingServiceStub]]:
    async with running_shard(shard_config(tmp_path, stubs, shard_id=SHARD)) as app, SagaClient(app.address) as client:
        yield client, ring_pb2_grpc.RingServiceStub(client.channel)


async def refusal(call: object) -> tuple[grpc.StatusCode, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call  # type: ignore[misc]
    return e.value.code(), {k: str(v) for k, v in e.value.trailing_metadata() or ()}


async def test_calls_are_fenced_by_the_epoch_they_were_routed_by(tmp_path: Path, stubs: str) -> None:
    async with shard(tmp_path, stubs) as (client, ring):
        assert not (await ring.GetRing(ring_pb2.GetRingRequest(), timeout=10)).history.epochs
        # A ring the shard has not been shown: it cannot fence without it.
        code, trailers = await refusal(client.saga.PlaceOrder(place_request(MINE), metadata=routed(1), timeout=10))
        assert (code, trailers["x-saga-ring-refusal"], trailers["x-saga-ring-epoch"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "unknown",
            "0",
        )
        # Unrouted calls (a client talking to the shard directly) are not fenced.
        held = await client.place(place_request("direct-1"))
        assert held.status == saga_pb2.SUCCESS

        await ring.InstallRing(ring_pb2.InstallRingRequest(history=history_message(HISTORY)), timeout=10)
        code, trailers = await refusal(client.saga.PlaceOrder(place_request(MINE), metadata=routed(1), timeout=10))
        assert trailers["x-saga-ring-refusal"] == "stale" and trailers["x-saga-ring-epoch"] == "2"
        code, trailers = await refusal(client.saga.PlaceOrder(place_request(THEIRS), metadata=routed(2), timeout=10))
        assert trailers["x-saga-ring-refusal"] == "not-owner"
        # An order the shard holds is answered whatever ring routed the call: its saga lives here.
        again = await client.saga.PlaceOrder(place_request("direct-1"), metadata=routed(1), timeout=10)
        assert again.saga_id == held.saga_id
        found = await client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id="direct-1"), metadata=routed(1), timeout=10)
        assert found.saga_id == held.saga_id
        placed = await client.saga.PlaceOrder(place_request(MINE), metadata=routed(2), timeout=10)
        assert placed.status == saga_pb2.SUCCESS


async def test_the_acknowledged_ring_survives_a_restart(tmp_path: Path, stubs: str) -> None:
    async with shard(tmp_path, stubs) as (_, ring):
        await ring.InstallRing(ring_pb2.InstallRingRequest(history=history_message(HISTORY)), timeout=10)
    async with shard(tmp_path, stubs) as (client, ring):
        held = (await ring.GetRing(ring_pb2.GetRingRequest(), timeout=10)).history
        assert [e.epoch for e in held.epochs] == [1, 2]
        code, trailers = await refusal(
            client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id=MINE), metadata=routed(1), timeout=10)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and trailers["x-saga-ring-refusal"] == "stale"
        code, _ = await refusal(
            ring.InstallRing(
                ring_pb2.InstallRingRequest(history=ring_pb2.RingHistory(epochs=[ring_pb2.RingEpoch(epoch=3)])),
                timeout=10,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def _replace(journal: Path, replica: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(replica, journal)


async def test_a_restored_journal_creates_no_saga_until_it_has_caught_up_with_its_peers(
    tmp_path: Path, stubs: str
) -> None:
    """The replica missed the newest ring the shard had acknowledged (epoch 2): restored, the shard holds epoch 1 and
    would start a saga for an order epoch 2 placed on its peer, on a call from a router still on epoch 1. It must
    refuse (UNAVAILABLE) until it has asked its peers, then fence by what they hold."""
    addresses = {sid: f"127.0.0.1:{free_port()}" for sid in ("shard-a", "shard-b")}
    configs = {}
    for sid, address in addresses.items():
        (tmp_path / sid).mkdir()
        configs[sid] = shard_config(tmp_path / sid, stubs, shard_id=sid, listen=address)
    epoch1 = EpochHistory().advance(64, list(addresses.items()), 1)
    epoch2 = epoch1.advance(128, list(addresses.items()), 2)  # another placement (vnodes): a new epoch
    owner1, owner2 = epoch1.current, epoch2.current
    assert owner1 is not None and owner2 is not None
    moved = next(
        o for o in (f"m-{i}" for i in range(1000)) if owner1.ring.owner(o) == "shard-a" != owner2.ring.owner(o)
    )
    journal_a = Path(configs["shard-a"].journal_path)
    replica = tmp_path / "replica.db"

    async def install(history: EpochHistory) -> None:
        for address in addresses.values():
            async with grpc.aio.insecure_channel(address) as channel:
                await ring_pb2_grpc.RingServiceStub(channel).InstallRing(
                    ring_pb2.InstallRingRequest(history=history_message(history)), timeout=10
                )

    async with running_shard(configs["shard-b"]):
        async with running_shard(configs["shard-a"]):
            await install(epoch1)
        with sqlite3.connect(journal_a) as src, sqlite3.connect(replica) as dst:
            src.backup(dst)  # the replica's last sync: epoch 1
        async with running_shard(configs["shard-a"]):
            await install(epoch2)
        async with SagaClient(addresses["shard-b"]) as b:
            placed = await b.saga.PlaceOrder(place_request(moved), metadata=routed(2), timeout=10)
    # shard-a's disk is lost and its journal restored from the replica, as `coordinator restore` leaves it.
    await asyncio.to_thread(_replace, journal_a, replica)
    await restore._mark_restored(str(journal_a))

    async with running_shard(configs["shard-a"]) as a, SagaClient(a.address) as client:  # its peer is down
        assert a.shard.ownership.catching_up and a.shard.ownership.history.number == 1
        for metadata in (routed(1), ()):
            code, trailers = await refusal(client.saga.PlaceOrder(place_request(moved), metadata=metadata, timeout=10))
            assert (code, trailers.get("x-saga-ring-refusal")) == (grpc.StatusCode.UNAVAILABLE, "catching-up")
        code, _ = await refusal(
            client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id=moved), metadata=routed(1), timeout=10)
        )
        assert code == grpc.StatusCode.UNAVAILABLE  # not NOT_FOUND: that answer is what lets a router place it
        async with running_shard(configs["shard-b"]):
            await asyncio.wait_for(a.shard.ownership.caught_up.wait(), 20)
            assert not a.shard.ownership.catching_up and a.shard.ownership.history == epoch2
            code, trailers = await refusal(client.saga.PlaceOrder(place_request(moved), metadata=routed(1), timeout=10))
            assert (code, trailers["x-saga-ring-refusal"]) == (grpc.StatusCode.FAILED_PRECONDITION, "stale")
    async with running_shard(configs["shard-a"]) as a:  # caught up for good: the mark went with that commit
        assert not a.shard.ownership.catching_up and a.shard.ownership.history.number == 2
    async with running_shard(configs["shard-b"]) as b, SagaClient(b.address) as client:
        assert (await client.get(moved)).saga_id == placed.saga_id


async def test_a_probe_whose_read_spans_a_ring_install_sees_a_saga_created_meanwhile(
    tmp_path: Path, stubs: str
) -> None:
    """The hole chaos found (multi_router, one order run on two shards at a ring change): a router on epoch 2 asks the
    order's epoch-1 owner GetSaga while that shard still holds epoch 1. The shard's journal read is slow (a reader
    thread); meanwhile a router still on epoch 1 places the order there (allowed: epoch 1 places it here), and epoch 2
    is installed. When the read comes back empty, the fence passes for epoch 2: answering NOT_FOUND would send the
    order to its epoch-2 owner too. The shard must answer with the saga it created meanwhile."""
    async with running_shard(shard_config(tmp_path, stubs, shard_id=SHARD)) as app, SagaClient(app.address) as client:
        ring = ring_pb2_grpc.RingServiceStub(client.channel)
        first = EpochHistory(HISTORY.epochs[:1])
        await ring.InstallRing(ring_pb2.InstallRingRequest(history=history_message(first)), timeout=10)
        journal = app.shard.journal
        read = journal.get_by_order
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow_read(order_id: str, with_events: bool = True, kept: bool = False) -> object:
            found = await read(order_id, with_events=with_events, kept=kept)
            if order_id == THEIRS and not entered.is_set():
                entered.set()  # read, not yet answered: what a busy reader thread does
                await release.wait()
            return found

        journal.get_by_order = slow_read  # type: ignore[method-assign]
        probe = asyncio.ensure_future(
            client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id=THEIRS), metadata=routed(2), timeout=30)
        )
        await asyncio.wait_for(entered.wait(), 30)
        placed = await client.saga.PlaceOrder(place_request(THEIRS, no_wait=True), metadata=routed(1), timeout=30)
        await ring.InstallRing(ring_pb2.InstallRingRequest(history=history_message(HISTORY)), timeout=10)
        release.set()
        found = await probe
        assert found.saga_id == placed.saga_id
