"""Stub micro-benchmark (`python -m bench stubs`): the stub process alone (durable, as `make run` starts it) under the
four forward calls of a saga, sent straight from this process, so its CPU per call is measured without the shards
and the router competing for the two cores.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from protos.shop.v1 import (
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
    shipping_pb2,
    shipping_pb2_grpc,
)

from .cluster import Cluster
from .probes import cpu_seconds, metric_sum

CALLS_PER_SAGA = 4


async def _drive(address: str, sagas: int, concurrency: int, run_id: str) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(address) as channel:
        order = order_pb2_grpc.OrderServiceStub(channel)
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
        payment = payment_pb2_grpc.PaymentServiceStub(channel)
        shipping = shipping_pb2_grpc.ShippingServiceStub(channel)
        items = [
            common_pb2.Item(item_id="bench-widget", quantity=1),
            common_pb2.Item(item_id="bench-gadget", quantity=2),
        ]
        errors = 0
        next_index = 0

        async def one(i: int) -> None:
            nonlocal errors
            oid = f"{run_id}-{i}"
            calls: list[tuple[Any, Any, str]] = [
                (order.CreateOrder, order_pb2.CreateOrderRequest(order_id=oid, user_id="u", items=items), "create"),
                (inventory.ReserveInventory, inventory_pb2.ReserveInventoryRequest(order_id=oid, items=items), "rsv"),
                (
                    payment.ChargePayment,
                    payment_pb2.ChargePaymentRequest(
                        order_id=oid, user_id="u", payment_token="tok_ok", amount_cents=1299, currency="EUR"
                    ),
                    "pay",
                ),
                (
                    shipping.ScheduleShipment,
                    shipping_pb2.ScheduleShipmentRequest(order_id=oid, user_id="u", items=items),
                    "s",
                ),
            ]
            for method, request, step in calls:
                try:
                    await method(request, timeout=30.0, metadata=(("idempotency-key", f"{oid}/{step}/forward"),))
                except grpc.aio.AioRpcError:
                    errors += 1

        async def caller() -> None:
            nonlocal next_index
            while next_index < sagas:
                i = next_index
                next_index += 1
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started, errors


def run(sagas: int, concurrency: int, warmup: int = 200) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-stubs-"))
    cluster = Cluster(workdir, shards=0)
    try:
        cluster.start_stubs_only()
        stubs = cluster.of_kind("stubs")[0]
        uvloop.run(_drive(stubs.address, warmup, concurrency, "warm"))
        text = stubs.metrics_text()
        tx_before = metric_sum(text, "saga_stub_store_transactions_total")
        cpu_before = cpu_seconds(stubs.pid)
        elapsed, errors = uvloop.run(_drive(stubs.address, sagas, concurrency, "m"))
        cpu = cpu_seconds(stubs.pid) - cpu_before
        tx = metric_sum(stubs.metrics_text(), "saga_stub_store_transactions_total") - tx_before
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    calls = sagas * CALLS_PER_SAGA
    return {
        "mode": "stubs",
        "sagas": sagas,
        "concurrency": concurrency,
        "calls_per_s": round(calls / elapsed, 1),
        "stubs_cpu_us_per_call": round(cpu * 1e6 / calls, 1),
        "stubs_commits_per_call": round(tx / calls, 3),
        "errors": errors,
        "cores": os.cpu_count() or 0,
    }
