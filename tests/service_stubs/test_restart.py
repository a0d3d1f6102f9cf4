"""Durability: a stopped, or SIGKILLed, stub comes back remembering keys, answers, tombstones, stock and charges."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from tests.helpers.stubs import ShopClient, StubControlClient, StubProcess, get_ledgers, running_stubs
from tests.service_stubs.conftest import rpc_error

ORDERS = ["o-ok", "o-declined", "o-tomb", "o-refunded"]


async def make_history(address: str) -> tuple[str, str]:
    """A bit of everything; returns the reservation and charge ids to compare after the restart."""
    async with ShopClient(address) as shop, StubControlClient(address) as control:
        await control.set_stock({"sku-r": 10})
        await shop.create_order("o-ok", key="create-ok")
        reservation = await shop.reserve("o-ok", key="reserve-ok", lines=[("sku-r", 4)])
        charge = await shop.charge("o-ok", key="charge-ok", amount_cents=1_500)
        await shop.schedule("o-ok", key="ship-ok")
        await rpc_error(
            shop.charge("o-declined", key="charge-d", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION
        )
        await shop.compensate("payment", "o-tomb", key="refund-t", forward_key="charge-t")
        await shop.charge("o-refunded", key="charge-r", amount_cents=300)
        await shop.compensate("payment", "o-refunded", key="refund-r", forward_key="charge-r")
    return reservation.reservation_id, charge.charge_id


async def check_history(address: str, reservation_id: str, charge_id: str) -> None:
    async with ShopClient(address) as shop:
        # Replays return the first answers and apply nothing new.
        assert (await shop.reserve("o-ok", key="reserve-ok", lines=[("sku-r", 4)])).reservation_id == reservation_id
        assert (await shop.charge("o-ok", key="charge-ok", amount_cents=1_500)).charge_id == charge_id
        await rpc_error(
            shop.charge("o-declined", key="charge-d", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION
        )
        await rpc_error(shop.charge("o-tomb", key="charge-t", amount_cents=5), grpc.StatusCode.ABORTED)
        await rpc_error(shop.charge("o-ok", key="charge-ok", amount_cents=9), grpc.StatusCode.ALREADY_EXISTS)
        await rpc_error(shop.create_order("o-ok", key="create-again"), grpc.StatusCode.FAILED_PRECONDITION)
        # Stock: 10 - 4 = 6 left.
        await rpc_error(shop.reserve("o-x", key="reserve-7", lines=[("sku-r", 7)]), grpc.StatusCode.FAILED_PRECONDITION)
        await shop.reserve("o-x", key="reserve-6", lines=[("sku-r", 6)])

    ledgers = await get_ledgers(address, ORDERS)
    ok = ledgers["o-ok"]
    assert ok.order_created and not ok.order_cancelled and ok.shipment_scheduled
    assert (dict(ok.reserved_net), ok.charged_cents, ok.refunded_cents) == ({"sku-r": 4}, 1_500, 0)
    assert {k.idempotency_key: k.applied_count for k in ok.keys} == {
        "create-ok": 1,
        "reserve-ok": 1,
        "charge-ok": 1,
        "ship-ok": 1,
        "create-again": 0,  # refused after the restart: the order still exists
    }
    assert [(k.code, k.applied_count) for k in ledgers["o-declined"].keys] == [("FAILED_PRECONDITION", 0)]
    assert {k.idempotency_key: k.tombstoned for k in ledgers["o-tomb"].keys} == {"refund-t": False, "charge-t": True}
    refunded = ledgers["o-refunded"]
    assert (refunded.charged_cents, refunded.refunded_cents) == (300, 300)


async def test_state_survives_a_stop_and_start(data_dir: Path) -> None:
    async with running_stubs(data_dir) as stubs:
        ids = await make_history(stubs.address)
    async with running_stubs(data_dir) as stubs:
        await check_history(stubs.address, *ids)


async def test_state_survives_sigkill_of_the_process(tmp_path: Path) -> None:
    with StubProcess(tmp_path / "stubs") as proc:
        ids = await make_history(proc.address)
        await asyncio.to_thread(proc.kill)
        assert not proc.running
        await asyncio.to_thread(proc.start)
        await check_history(proc.address, *ids)
        assert "listening on" in proc.log()


async def test_sigterm_stops_gracefully(tmp_path: Path) -> None:
    with StubProcess(tmp_path / "stubs", services=["payment", "control"]) as proc:
        async with ShopClient(proc.address) as shop:
            await shop.charge("o-1", key="k1", amount_cents=5)
        assert await asyncio.to_thread(proc.terminate) == 0
        assert "stopped" in proc.log()
        await asyncio.to_thread(proc.restart)
        assert (await get_ledgers(proc.address, ["o-1"]))["o-1"].charged_cents == 5
