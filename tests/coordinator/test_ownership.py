"""A shard's fencing (coordinator.ownership) over gRPC: which calls it refuses for their ring epoch, and that the ring
it acknowledged survives a restart (a shard that forgot it would accept the older ring's calls again)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.ring import EpochHistory, history_message
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
