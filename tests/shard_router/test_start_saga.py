"""StartSaga and key-named calls through the router, in front of real coordinator shards and the real stub services
(all in this process, on 127.0.0.1): the order flow started either way is one saga, the key alone decides the shard,
and two types with one key are two sagas."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from coordinator.config import Services
from protos.saga.v1 import saga_pb2
from shard_router import HashRing, RouterServer, load
from shard_router.config import default_epochs_path
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import running_stubs

from .conftest import rich_status, write_shards

TWO = ["shard-1", "shard-2"]


def start_request(
    saga_type: str, key: str, order: saga_pb2.PlaceOrderRequest | None = None
) -> saga_pb2.StartSagaRequest:
    packed = any_pb2.Any()
    packed.Pack(order or place_request(key))
    return saga_pb2.StartSagaRequest(saga_type=saga_type, key=key, input=packed)


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], SagaClient]]:
    async with contextlib.AsyncExitStack() as stack:
        stubs = await stack.enter_async_context(running_stubs(tmp_path / "stubs"))
        shards: dict[str, str] = {}
        for sid in TWO:
            (tmp_path / sid).mkdir()
            cfg = shard_config(tmp_path / sid, stubs.address, shard_id=sid)
            cfg = dataclasses.replace(cfg, services=Services.all_at(stubs.address))  # loyalty too
            shards[sid] = (await stack.enter_async_context(running_shard(cfg))).address
        config_path = tmp_path / "shards.toml"
        write_shards(config_path, list(shards.items()), epochs_path=default_epochs_path(config_path))
        router = RouterServer(load(config_path, listen="127.0.0.1:0", env={}))
        await router.start()
        stack.push_async_callback(router.stop, 0.5)
        yield shards, await stack.enter_async_context(SagaClient(f"127.0.0.1:{router.port}"))


async def test_start_saga_of_type_order_is_the_place_order_saga(routed: tuple[dict[str, str], SagaClient]) -> None:
    _, client = routed
    placed = await client.place(place_request("s-1"))
    started = await client.saga.StartSaga(start_request("order", "s-1"), timeout=10)
    again = await client.saga.StartSaga(start_request("order", "s-1"), timeout=10)
    assert started.saga_id == again.saga_id == placed.saga_id
    assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED
    by_key = await client.saga.GetSaga(saga_pb2.GetSagaRequest(saga_type="order", key="s-1"), timeout=10)
    assert by_key.saga_id == placed.saga_id
    assert by_key.shard_id == HashRing(TWO, 1024).owner("s-1")


async def test_unknown_type_is_not_found_and_bad_names_are_invalid(routed: tuple[dict[str, str], SagaClient]) -> None:
    _, client = routed
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.saga.StartSaga(start_request("refund", "s-2"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    for request, field in (
        (start_request("", "s-2"), "saga_type"),
        (start_request("Not-A-Type", "s-2"), "saga_type"),
        (start_request("order", ""), "key"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.saga.StartSaga(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rich_status(e.value)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == field
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id="s-2", key="s-2"), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.saga.GetSaga(saga_pb2.GetSagaRequest(saga_type="order", key="nobody"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_definitions_merges_the_shards(routed: tuple[dict[str, str], SagaClient]) -> None:
    _, client = routed
    await client.place(place_request("s-3"))
    listed = await client.admin.ListDefinitions(saga_pb2.ListDefinitionsRequest(), timeout=10)
    assert [(d.name, d.active) for d in listed.definitions] == [("order", True)]  # one entry, though two shards
    assert listed.definitions[0].step_ids[0] == "create_order"
