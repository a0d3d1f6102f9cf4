"""Reserve and release commute: many orders racing for the last units of two items, each reservation then sold or
released (some calls sent twice, some releases before their reservation), never take stock below zero, and every unit
reserved ends sold or back in stock."""

from __future__ import annotations

import asyncio
import random

import grpc

from protos.shop.v1 import inventory_pb2
from service_stubs import StubServer
from service_stubs.inventory import InventoryService
from tests.helpers.stubs import ShopClient, StubControlClient
from tests.service_stubs.conftest import confirm, get_reservation

STOCK = {"last-a": 6, "last-b": 4}
ORDERS = 80
ARRIVALS_S = 0.4
SEED = 20261205


async def one_order(shop: ShopClient, rng: random.Random, index: int) -> tuple[str, dict[str, int]] | None:
    """Reserves a few of the last units, then sells or releases them; returns (its key, what it reserved) if the
    reservation was made, None if it was refused (or tombstoned by an early release)."""
    order_id, key = f"o-{index}", f"reserve-{index}"
    lines = [(item, rng.randint(1, 2)) for item in sorted(STOCK) if rng.random() < 0.7] or [("last-a", 1)]
    early_release = rng.random() < 0.1
    duplicate = rng.random() < 0.3
    sell = rng.random() < 0.25
    # Arrivals spread over ARRIVALS_S, several times as long as an order holds its units (up to 50 ms, then a call):
    # late orders find units that early ones released, however slow the machine is (all arriving within one hold,
    # as when this was 50 ms, a busy machine could leave the last units never reused).
    await asyncio.sleep(rng.random() * ARRIVALS_S)
    if early_release:  # the compensation overtakes its forward call: the reservation must never apply
        await shop.compensate("inventory", order_id, key=f"release-{index}", forward_key=key)
    calls = [shop.reserve(order_id, key=key, lines=lines) for _ in range(2 if duplicate else 1)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, grpc.aio.AioRpcError):
            expected = grpc.StatusCode.ABORTED if early_release else grpc.StatusCode.FAILED_PRECONDITION
            assert outcome.code() == expected, f"{order_id}: {outcome.code()} {outcome.details()}"
        else:
            assert not isinstance(outcome, BaseException), outcome
    if any(isinstance(outcome, BaseException) for outcome in outcomes):
        return None
    await asyncio.sleep(rng.random() * 0.05)
    if sell:
        sold = [confirm(shop, order_id, key=f"confirm-{index}") for _ in range(2 if duplicate else 1)]
        assert all(reply.state == inventory_pb2.RESERVATION_STATE_SOLD for reply in await asyncio.gather(*sold))
    else:
        released = [
            shop.compensate("inventory", order_id, key=f"release-{index}", forward_key=key)
            for _ in range(2 if duplicate else 1)
        ]
        assert all(reply.undone for reply in await asyncio.gather(*released))
    units: dict[str, int] = {}
    for item, quantity in lines:
        units[item] = units.get(item, 0) + quantity
    return key, units


async def test_concurrent_orders_on_the_last_units_never_oversell(
    stubs: StubServer, shop: ShopClient, control: StubControlClient
) -> None:
    print(f"seed {SEED}")
    rng = random.Random(SEED)
    await control.set_stock(STOCK)
    inventory = stubs.services["inventory"]
    assert isinstance(inventory, InventoryService)
    lowest = dict(STOCK)
    done = asyncio.Event()

    async def watch_stock() -> None:
        while not done.is_set():
            for item in STOCK:
                lowest[item] = min(lowest[item], inventory.level(item))
            await asyncio.sleep(0.0005)

    watcher = asyncio.create_task(watch_stock())
    try:
        results = await asyncio.gather(*(one_order(shop, random.Random(rng.random()), i) for i in range(ORDERS)))
    finally:
        done.set()
        await watcher
    assert all(level >= 0 for level in lowest.values()), lowest

    made = [result for result in results if result is not None]
    assert made, "no reservation succeeded: the test proves nothing"
    sold = dict.fromkeys(STOCK, 0)
    reserved = dict.fromkeys(STOCK, 0)
    for index, result in enumerate(results):
        if result is None:
            continue
        key, units = result
        reservation = await get_reservation(shop, f"o-{index}", key)
        assert reservation.state in (inventory_pb2.RESERVATION_STATE_SOLD, inventory_pb2.RESERVATION_STATE_RELEASED)
        for item, quantity in units.items():
            reserved[item] += quantity
            if reservation.state == inventory_pb2.RESERVATION_STATE_SOLD:
                sold[item] += quantity
    for item, initial in STOCK.items():
        # Every unit reserved is sold or back in stock: what is missing from stock is exactly what was sold.
        assert inventory.level(item) == initial - sold[item], (item, inventory.level(item), sold, reserved)
        assert 0 <= sold[item] <= initial
    print(f"{len(made)} of {ORDERS} reservations made, units reserved {reserved}, sold {sold}, lowest stock {lowest}")
    assert sum(reserved.values()) > sum(STOCK.values()), "the last units were never reused: raise ORDERS"
    ledgers = await control.get_ledgers([f"o-{i}" for i in range(ORDERS)])
    for ledger in ledgers.values():
        assert all(k.applied_count <= 1 for k in ledger.keys), ledger
