"""StartSaga and key-named calls through the router, in front of real coordinator shards and the real stub services
(all in this process, on 127.0.0.1): the order flow started either way is one saga, the key alone decides the shard,
and two types with one key are two sagas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from protos.saga.v1 import saga_pb2
from shard_router import HashRing
from tests.helpers.coordinator import SagaClient, place_request

from .conftest import rich_status
from .real_shards import RealSystem, real_system, start_request

TWO = ["shard-1", "shard-2"]


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[tuple[RealSystem, SagaClient]]:
    async with real_system(tmp_path, TWO) as (system, client):
        yield system, client


async def test_start_saga_of_type_order_is_the_place_order_saga(routed: tuple[RealSystem, SagaClient]) -> None:
    _, client = routed
    placed = await client.place(place_request("s-1"))
    started = await client.saga.StartSaga(start_request("order", "s-1"), timeout=10)
    again = await client.saga.StartSaga(start_request("order", "s-1"), timeout=10)
    assert started.saga_id == again.saga_id == placed.saga_id
    assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED
    by_key = await client.saga.GetSaga(saga_pb2.GetSagaRequest(saga_type="order", key="s-1"), timeout=10)
    assert by_key.saga_id == placed.saga_id
    assert by_key.shard_id == HashRing(TWO, 1024).owner("s-1")


async def test_unknown_type_is_not_found_and_bad_names_are_invalid(routed: tuple[RealSystem, SagaClient]) -> None:
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


async def test_list_definitions_merges_the_shards(routed: tuple[RealSystem, SagaClient]) -> None:
    _, client = routed
    await client.place(place_request("s-3"))
    listed = await client.admin.ListDefinitions(saga_pb2.ListDefinitionsRequest(), timeout=10)
    assert [(d.name, d.active) for d in listed.definitions] == [("order", True)]  # one entry, though two shards
    assert listed.definitions[0].step_ids[0] == "create_order"
