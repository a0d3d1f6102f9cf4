"""Fixtures for the stub suite: one in-process stub server per test, on a free port, data in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.shop.v1 import inventory_pb2, order_pb2, shipping_pb2
from service_stubs import StubServer
from tests.helpers.stubs import ShopClient, StubControlClient, key_metadata, running_stubs


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "stubs"


@pytest.fixture
async def stubs(data_dir: Path) -> AsyncIterator[StubServer]:
    async with running_stubs(data_dir) as server:
        yield server


@pytest.fixture
async def shop(stubs: StubServer) -> AsyncIterator[ShopClient]:
    async with ShopClient(stubs.address) as client:
        yield client


@pytest.fixture
async def control(stubs: StubServer) -> AsyncIterator[StubControlClient]:
    async with StubControlClient(stubs.address) as client:
        yield client


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; returns the error for further checks."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value


# The semantic lock's calls (shop.v1 ApproveOrder, ConfirmReservation, ReleaseShipment and their reads), on ShopClient's
# stubs: the final steps carry an idempotency key like every call; the reads need none.


async def approve(shop: ShopClient, order_id: str, *, key: str) -> order_pb2.ApproveOrderResponse:
    request = order_pb2.ApproveOrderRequest(order_id=order_id)
    return await shop.order.ApproveOrder(request, metadata=key_metadata(key), timeout=10)


async def get_order(shop: ShopClient, order_id: str) -> order_pb2.GetOrderResponse:
    return await shop.order.GetOrder(order_pb2.GetOrderRequest(order_id=order_id), timeout=10)


async def confirm(
    shop: ShopClient, order_id: str, *, key: str, reservation_key: str = ""
) -> inventory_pb2.ConfirmReservationResponse:
    request = inventory_pb2.ConfirmReservationRequest(order_id=order_id, reservation_idempotency_key=reservation_key)
    return await shop.inventory.ConfirmReservation(request, metadata=key_metadata(key), timeout=10)


async def get_reservation(
    shop: ShopClient, order_id: str, reservation_key: str = ""
) -> inventory_pb2.GetReservationResponse:
    request = inventory_pb2.GetReservationRequest(order_id=order_id, reservation_idempotency_key=reservation_key)
    return await shop.inventory.GetReservation(request, timeout=10)


async def release_shipment(shop: ShopClient, order_id: str, *, key: str) -> shipping_pb2.ReleaseShipmentResponse:
    request = shipping_pb2.ReleaseShipmentRequest(order_id=order_id)
    return await shop.shipping.ReleaseShipment(request, metadata=key_metadata(key), timeout=10)


async def get_shipment(shop: ShopClient, order_id: str) -> shipping_pb2.GetShipmentResponse:
    return await shop.shipping.GetShipment(shipping_pb2.GetShipmentRequest(order_id=order_id), timeout=10)
