"""The router in front of real coordinator shards and the real stub services (all in this process, on 127.0.0.1).

Shows what a client sees through the router: business outcomes and rich errors as a shard gives them, lists merged
across shards, WatchSaga streams, and a live re-shard after which a retried PlaceOrder joins the saga it already has.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.saga.v1 import saga_pb2
from shard_router import HashRing, RouterServer, load
from shard_router.config import default_epochs_path
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import running_stubs

from .conftest import rich_status, write_shards

THREE = ["shard-1", "shard-2", "shard-3"]


class System:
    def __init__(self, tmp_path: Path, stack: contextlib.AsyncExitStack, stubs_address: str) -> None:
        self.tmp_path = tmp_path
        self.stack = stack
        self.stubs_address = stubs_address
        self.shards: dict[str, str] = {}
        self.config_path = tmp_path / "shards.toml"
        self.router: RouterServer | None = None

    async def add_shard(self, shard_id: str) -> None:
        cfg = shard_config(self.tmp_path / shard_id, self.stubs_address, shard_id=shard_id)
        (self.tmp_path / shard_id).mkdir()
        app = await self.stack.enter_async_context(running_shard(cfg))
        self.shards[shard_id] = app.address

    def write_config(self) -> None:
        write_shards(self.config_path, list(self.shards.items()), epochs_path=default_epochs_path(self.config_path))


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[tuple[System, SagaClient]]:
    async with contextlib.AsyncExitStack() as stack:
        stubs = await stack.enter_async_context(running_stubs(tmp_path / "stubs"))
        s = System(tmp_path, stack, stubs.address)
        for sid in THREE:
            await s.add_shard(sid)
        s.write_config()
        router = RouterServer(load(s.config_path, listen="127.0.0.1:0", env={}))
        await router.start()
        stack.push_async_callback(router.stop, 0.5)
        s.router = router
        client = await stack.enter_async_context(SagaClient(f"127.0.0.1:{router.port}"))
        yield s, client


async def test_outcomes_errors_lists_and_watch_through_the_router(system: tuple[System, SagaClient]) -> None:
    _, client = system
    ring = HashRing(THREE, 1024)
    ok = await client.place(place_request("r-ok"))
    assert ok.status == saga_pb2.SUCCESS
    declined = await client.place(place_request("r-declined", token="tok_declined"))
    assert declined.status == saga_pb2.FAILED and "declined" in declined.error_message
    sold_out = await client.place(place_request("r-sold-out", items=[("sold-out-widget", 1)]))
    assert sold_out.status == saga_pb2.FAILED and "reserve_inventory" in sold_out.error_message
    for order_id in ("r-ok", "r-declined", "r-sold-out"):
        assert (await client.get(order_id)).shard_id == ring.owner(order_id)

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.place(place_request("r-bad", user_id=""))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(e.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "user_id"

    listed = await client.saga.ListSagas(saga_pb2.ListSagasRequest(page_size=2), timeout=10)
    rest = await client.saga.ListSagas(
        saga_pb2.ListSagasRequest(page_size=2, page_token=listed.next_page_token), timeout=10
    )
    assert [s.order_id for s in [*listed.sagas, *rest.sagas]] == ["r-sold-out", "r-declined", "r-ok"]
    assert not rest.next_page_token

    updates = [u async for u in client.saga.WatchSaga(saga_pb2.WatchSagaRequest(order_id="r-ok"), timeout=10)]
    assert updates[-1].saga.state == saga_pb2.SAGA_STATE_SUCCEEDED


async def test_a_retry_after_adding_a_shard_joins_the_existing_saga(system: tuple[System, SagaClient]) -> None:
    s, client = system
    ring4 = HashRing([*THREE, "shard-4"], 1024)
    orders = [f"m-{i}" for i in range(40)]
    first = {o: await client.place(place_request(o)) for o in orders}
    moved = [o for o in orders if ring4.owner(o) == "shard-4"]
    assert moved

    await s.add_shard("shard-4")
    s.write_config()
    assert s.router is not None and await s.router.reload()

    for order_id in moved:
        retry = await client.place(place_request(order_id))
        assert retry.saga_id == first[order_id].saga_id and retry.status == saga_pb2.SUCCESS
        assert (await client.get(order_id)).shard_id != "shard-4"
    with pytest.raises(grpc.aio.AioRpcError) as e:  # same order, other payload: the old owner's answer
        await client.place(place_request(moved[0], amount_cents=1))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS

    async with SagaClient(s.shards["shard-4"]) as direct:
        assert not (await direct.saga.ListSagas(saga_pb2.ListSagasRequest(), timeout=10)).sagas
    fresh = next(o for o in (f"n-{i}" for i in range(100)) if ring4.owner(o) == "shard-4")
    assert (await client.place(place_request(fresh))).status == saga_pb2.SUCCESS
    assert (await client.get(fresh)).shard_id == "shard-4"
