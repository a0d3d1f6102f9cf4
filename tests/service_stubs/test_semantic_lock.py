"""The semantic lock (service_stubs/holds.py): an order PENDING until APPROVED or REJECTED, a reservation HELD until
SOLD or RELEASED, a shipment SCHEDULED until RELEASED or CANCELLED; both ends final, each final step idempotent by key,
the reads telling "in progress" from "done", all of it durable."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import grpc

from protos.service_stubs.v1 import control_pb2
from protos.shop.v1 import common_pb2, order_pb2
from tests.helpers.stubs import ShopClient, StubControlClient, StubProcess, fault_rule, running_stubs
from tests.service_stubs.conftest import (
    approve,
    confirm,
    get_order,
    get_reservation,
    get_shipment,
    release_shipment,
    rpc_error,
)
from tests.service_stubs.states import APPROVED, CANCELLED, HELD, PENDING, REJECTED, RELEASED, SCHEDULED, SHIPPED, SOLD


def applied(records: Iterable[control_pb2.KeyRecord], key: str) -> int:
    return next(k.applied_count for k in records if k.idempotency_key == key)


# ---------------------------------------------------------------- Order


async def test_an_order_is_pending_until_approved_and_approval_is_idempotent(
    shop: ShopClient, control: StubControlClient
) -> None:
    await shop.create_order("o-1", key="create", user_id="u-7", lines=[("sku-1", 2), ("sku-2", 1)])
    order = await get_order(shop, "o-1")
    assert (order.order_id, order.state, order.user_id) == ("o-1", PENDING, "u-7")
    assert [(i.item_id, i.quantity) for i in order.items] == [("sku-1", 2), ("sku-2", 1)]

    assert (await approve(shop, "o-1", key="approve")).state == APPROVED
    assert (await approve(shop, "o-1", key="approve")).state == APPROVED  # replay: the first answer
    assert (await approve(shop, "o-1", key="approve-again")).state == APPROVED  # another key: nothing new
    assert (await get_order(shop, "o-1")).state == APPROVED

    ledger = await control.get_ledger("o-1")
    assert ledger.order_state == APPROVED and ledger.order_created and not ledger.order_cancelled
    assert (applied(ledger.keys, "approve"), applied(ledger.keys, "approve-again")) == (1, 0)
    reply = await shop.get_operation("order", "approve")
    assert (reply.state, reply.code, reply.method) == (common_pb2.OPERATION_STATE_DONE, "OK", "ApproveOrder")
    response = order_pb2.ApproveOrderResponse()
    assert reply.response.Unpack(response) and response.state == APPROVED


async def test_approval_is_final_and_rejection_too(shop: ShopClient, control: StubControlClient) -> None:
    await shop.create_order("o-a", key="create-a")
    await approve(shop, "o-a", key="approve-a")
    error = await rpc_error(
        shop.compensate("order", "o-a", key="cancel-a", forward_key="create-a"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "APPROVED" in (error.details() or "")
    await rpc_error(  # the refusal is the key's recorded answer
        shop.compensate("order", "o-a", key="cancel-a", forward_key="create-a"), grpc.StatusCode.FAILED_PRECONDITION
    )
    await rpc_error(shop.create_order("o-a", key="create-a2"), grpc.StatusCode.FAILED_PRECONDITION)  # still open
    assert (await get_order(shop, "o-a")).state == APPROVED

    await shop.create_order("o-r", key="create-r")
    await shop.compensate("order", "o-r", key="cancel-r", forward_key="create-r")
    assert (await get_order(shop, "o-r")).state == REJECTED  # kept, not deleted
    error = await rpc_error(approve(shop, "o-r", key="approve-r"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "REJECTED" in (error.details() or "")
    await rpc_error(approve(shop, "o-r", key="approve-r"), grpc.StatusCode.FAILED_PRECONDITION)
    ledgers = await control.get_ledgers(["o-a", "o-r"])
    assert (ledgers["o-a"].order_state, ledgers["o-r"].order_state) == (APPROVED, REJECTED)
    assert applied(ledgers["o-a"].keys, "cancel-a") == 0 and applied(ledgers["o-r"].keys, "approve-r") == 0


async def test_approve_and_get_order_refuse_what_they_cannot_answer(shop: ShopClient) -> None:
    await rpc_error(get_order(shop, "o-nobody"), grpc.StatusCode.NOT_FOUND)
    await rpc_error(approve(shop, "o-nobody", key="k"), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(approve(shop, "o-other", key="k"), grpc.StatusCode.ALREADY_EXISTS)  # key reused, other request
    request = order_pb2.ApproveOrderRequest(order_id="o-1")
    await rpc_error(shop.order.ApproveOrder(request, timeout=10), grpc.StatusCode.INVALID_ARGUMENT)  # no key
    await rpc_error(approve(shop, "", key="k-empty"), grpc.StatusCode.INVALID_ARGUMENT)
    await rpc_error(get_order(shop, ""), grpc.StatusCode.INVALID_ARGUMENT)
    # A refused creation creates nothing to read.
    await shop.create_order("o-1", key="c1")
    await rpc_error(shop.create_order("o-1", key="c2"), grpc.StatusCode.FAILED_PRECONDITION)
    assert (await get_order(shop, "o-1")).state == PENDING


async def test_a_rejected_order_created_again_is_a_new_pending_order(
    shop: ShopClient, control: StubControlClient
) -> None:
    """CreateOrder always allowed this; the rejected creation stays REJECTED in its own record."""
    await shop.create_order("o-1", key="c1")
    await shop.compensate("order", "o-1", key="x1", forward_key="c1")
    await shop.create_order("o-1", key="c2")
    assert (await get_order(shop, "o-1")).state == PENDING
    await approve(shop, "o-1", key="a2")
    assert (await control.get_ledger("o-1")).order_state == APPROVED
    # The first creation's compensation replays; the second's is refused (approved).
    assert (await shop.compensate("order", "o-1", key="x1", forward_key="c1")).undone
    await rpc_error(shop.compensate("order", "o-1", key="x2", forward_key="c2"), grpc.StatusCode.FAILED_PRECONDITION)


async def test_approval_waits_for_a_creation_in_progress_and_loses_to_a_cancellation_in_progress(
    shop: ShopClient,
) -> None:
    await shop.create_order("o-lro", key="c", lines=[("lro-create-never-sku", 1)])
    await rpc_error(approve(shop, "o-lro", key="a"), grpc.StatusCode.UNAVAILABLE)  # not decided yet: retry
    await rpc_error(get_order(shop, "o-lro"), grpc.StatusCode.NOT_FOUND)  # nothing applied yet
    await shop.compensate("order", "o-lro", key="x", forward_key="c")  # cancels the creation
    await rpc_error(approve(shop, "o-lro", key="a"), grpc.StatusCode.FAILED_PRECONDITION)  # now it is decided

    await shop.create_order("o-slow", key="c2", lines=[("lro-cancelorder-never-sku", 1)])
    cancelling = await shop.compensate("order", "o-slow", key="x2", forward_key="c2")
    assert not cancelling.operation.done  # accepted, settles later
    error = await rpc_error(approve(shop, "o-slow", key="a2"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "being undone" in (error.details() or "")

    # The other way round: an approved order's long-running cancellation is refused at once, never accepted.
    await shop.create_order("o-final", key="c3", lines=[("lro-cancelorder-5s-sku", 1)])
    await approve(shop, "o-final", key="a3")
    await rpc_error(
        shop.compensate("order", "o-final", key="x3", forward_key="c3"), grpc.StatusCode.FAILED_PRECONDITION
    )


# ---------------------------------------------------------------- Inventory


async def test_a_reservation_is_held_until_confirmed_then_sold_for_good(
    shop: ShopClient, control: StubControlClient
) -> None:
    await control.set_stock({"sku-s": 10})
    reservation = await shop.reserve("o-1", key="res", lines=[("sku-s", 3)])
    held = await get_reservation(shop, "o-1")
    assert (held.state, held.reservation_id, [(i.item_id, i.quantity) for i in held.items]) == (
        HELD,
        reservation.reservation_id,
        [("sku-s", 3)],
    )
    assert (await control.get_ledger("o-1")).reservation_state == HELD

    sold = await confirm(shop, "o-1", key="confirm")
    assert (sold.state, sold.reservation_id) == (SOLD, reservation.reservation_id)
    assert await confirm(shop, "o-1", key="confirm") == sold  # replay
    assert (await confirm(shop, "o-1", key="confirm-2", reservation_key="res")).state == SOLD  # by key: nothing new
    error = await rpc_error(
        shop.compensate("inventory", "o-1", key="release", forward_key="res"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "SOLD" in (error.details() or "")
    assert (await get_reservation(shop, "o-1", "res")).state == SOLD
    # The 3 units sold never come back: 7 left.
    await rpc_error(shop.reserve("o-2", key="res-8", lines=[("sku-s", 8)]), grpc.StatusCode.FAILED_PRECONDITION)
    await shop.reserve("o-2", key="res-7", lines=[("sku-s", 7)])
    ledger = await control.get_ledger("o-1")
    assert (ledger.reservation_state, dict(ledger.reserved_net)) == (SOLD, {"sku-s": 3})
    assert (applied(ledger.keys, "confirm"), applied(ledger.keys, "confirm-2"), applied(ledger.keys, "release")) == (
        1,
        0,
        0,
    )


async def test_a_released_reservation_cannot_be_sold(shop: ShopClient, control: StubControlClient) -> None:
    await shop.reserve("o-1", key="res", lines=[("sku-1", 2)])
    await shop.compensate("inventory", "o-1", key="release", forward_key="res")
    assert (await get_reservation(shop, "o-1")).state == RELEASED
    error = await rpc_error(confirm(shop, "o-1", key="confirm"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "RELEASED" in (error.details() or "")
    ledger = await control.get_ledger("o-1")
    assert (ledger.reservation_state, dict(ledger.reserved_net)) == (RELEASED, {})
    # Never reserved, refused, or another order's key: nothing to sell or read.
    await rpc_error(confirm(shop, "o-none", key="c-none"), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(get_reservation(shop, "o-none"), grpc.StatusCode.NOT_FOUND)
    await rpc_error(shop.reserve("o-sold", key="r-out", lines=[("sold-out-x", 1)]), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(get_reservation(shop, "o-sold", "r-out"), grpc.StatusCode.NOT_FOUND)
    await rpc_error(get_reservation(shop, "o-none", "res"), grpc.StatusCode.NOT_FOUND)
    await rpc_error(confirm(shop, "o-1", key="c-bad", reservation_key="x" * 600), grpc.StatusCode.INVALID_ARGUMENT)


async def test_an_order_with_two_reservations_names_the_one_to_sell(
    shop: ShopClient, control: StubControlClient
) -> None:
    await shop.reserve("o-1", key="r1", lines=[("sku-1", 1)])
    await shop.reserve("o-1", key="r2", lines=[("sku-2", 1)])
    await rpc_error(confirm(shop, "o-1", key="c"), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(get_reservation(shop, "o-1"), grpc.StatusCode.FAILED_PRECONDITION)
    assert (await confirm(shop, "o-1", key="c2", reservation_key="r2")).state == SOLD
    await shop.compensate("inventory", "o-1", key="x1", forward_key="r1")
    assert (await get_reservation(shop, "o-1")).state == SOLD  # the one left live
    assert (await control.get_ledger("o-1")).reservation_state == SOLD


# ---------------------------------------------------------------- Shipping


async def test_a_shipment_is_held_until_released_to_the_carrier(shop: ShopClient, control: StubControlClient) -> None:
    scheduled = await shop.schedule("o-1", key="ship", lines=[("sku-1", 2)])
    shipment = await get_shipment(shop, "o-1")
    assert (shipment.state, shipment.shipment_id) == (SCHEDULED, scheduled.shipment_id)
    assert [(i.item_id, i.quantity) for i in shipment.items] == [("sku-1", 2)]
    released = await release_shipment(shop, "o-1", key="release")
    assert (released.state, released.shipment_id) == (SHIPPED, scheduled.shipment_id)
    assert await release_shipment(shop, "o-1", key="release") == released
    assert (await release_shipment(shop, "o-1", key="release-2")).state == SHIPPED
    error = await rpc_error(
        shop.compensate("shipping", "o-1", key="cancel", forward_key="ship"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "RELEASED" in (error.details() or "")
    ledger = await control.get_ledger("o-1")
    assert (ledger.shipment_state, ledger.shipment_scheduled, ledger.shipment_cancelled) == (SHIPPED, True, False)


async def test_a_cancelled_shipment_is_never_released(shop: ShopClient, control: StubControlClient) -> None:
    await shop.schedule("o-1", key="ship")
    await shop.compensate("shipping", "o-1", key="cancel", forward_key="ship")
    assert (await get_shipment(shop, "o-1")).state == CANCELLED
    await rpc_error(release_shipment(shop, "o-1", key="release"), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(release_shipment(shop, "o-none", key="release-none"), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(get_shipment(shop, "o-none"), grpc.StatusCode.NOT_FOUND)
    assert (await control.get_ledger("o-1")).shipment_state == CANCELLED


# ---------------------------------------------------------------- the order flow, faults, durability


async def test_the_order_flow_leaves_its_orders_pending(shop: ShopClient, control: StubControlClient) -> None:
    """What the coordinator's order flow does today (no final steps): nothing changes for it."""
    await shop.create_order("o-1", key="c")
    await shop.reserve("o-1", key="r")
    await shop.charge("o-1", key="p")
    await shop.schedule("o-1", key="s")
    ledger = await control.get_ledger("o-1")
    assert (ledger.order_state, ledger.reservation_state, ledger.shipment_state) == (PENDING, HELD, SCHEDULED)


async def test_faults_apply_to_the_final_steps_and_the_reads(shop: ShopClient, control: StubControlClient) -> None:
    await shop.create_order("o-1", key="c")
    await control.set_faults([fault_rule("ApproveOrder", error_rate=1.0), fault_rule("GetOrder", error_rate=1.0)], 7)
    await rpc_error(approve(shop, "o-1", key="a"), grpc.StatusCode.UNAVAILABLE)
    await rpc_error(get_order(shop, "o-1"), grpc.StatusCode.UNAVAILABLE)
    assert (await control.get_ledger("o-1")).order_state == PENDING  # nothing applied
    # The ambiguous outcome: approved durably, the reply lost; the retry gets the recorded answer.
    await control.set_faults([fault_rule("ApproveOrder", apply_then_fail_rate=1.0, error_code="INTERNAL")], 7)
    await rpc_error(approve(shop, "o-1", key="a"), grpc.StatusCode.INTERNAL)
    await control.clear_faults()
    assert (await control.get_ledger("o-1")).order_state == APPROVED
    assert (await approve(shop, "o-1", key="a")).state == APPROVED
    stats = await control.get_stats()
    assert stats[("ApproveOrder", "UNAVAILABLE")] == 1 and stats[("ApproveOrder", "OK")] == 1
    assert stats[("GetOrder", "UNAVAILABLE")] == 1


async def make_states(address: str) -> None:
    async with ShopClient(address) as shop, StubControlClient(address) as control:
        await control.set_stock({"sku-d": 10})
        for order_id in ("o-approved", "o-rejected", "o-pending"):
            await shop.create_order(order_id, key=f"create-{order_id}")
            await shop.reserve(order_id, key=f"reserve-{order_id}", lines=[("sku-d", 2)])
            await shop.schedule(order_id, key=f"ship-{order_id}")
        await approve(shop, "o-approved", key="approve")
        await confirm(shop, "o-approved", key="confirm")
        await release_shipment(shop, "o-approved", key="release")
        for service, forward in (("shipping", "ship"), ("inventory", "reserve"), ("order", "create")):
            await shop.compensate(service, "o-rejected", key=f"undo-{forward}", forward_key=f"{forward}-o-rejected")


async def check_states(address: str) -> None:
    async with ShopClient(address) as shop:
        states = {
            order_id: (
                (await get_order(shop, order_id)).state,
                (await get_reservation(shop, order_id)).state,
                (await get_shipment(shop, order_id)).state,
            )
            for order_id in ("o-approved", "o-rejected", "o-pending")
        }
        assert states == {
            "o-approved": (APPROVED, SOLD, SHIPPED),
            "o-rejected": (REJECTED, RELEASED, CANCELLED),
            "o-pending": (PENDING, HELD, SCHEDULED),
        }
        # The final answers replay, the refusals stand.
        assert (await approve(shop, "o-approved", key="approve")).state == APPROVED
        await rpc_error(approve(shop, "o-rejected", key="approve-r"), grpc.StatusCode.FAILED_PRECONDITION)
        await rpc_error(
            shop.compensate("order", "o-approved", key="cancel-a", forward_key="create-o-approved"),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        await rpc_error(
            shop.compensate("inventory", "o-approved", key="release-a", forward_key="reserve-o-approved"),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        # 10 - 2 sold - 2 held = 6 left (the rejected order's 2 came back).
        await rpc_error(shop.reserve("o-x", key="r7", lines=[("sku-d", 7)]), grpc.StatusCode.FAILED_PRECONDITION)
        await shop.reserve("o-x", key="r6", lines=[("sku-d", 6)])
        # The pending order can still go either way.
        await approve(shop, "o-pending", key="approve-p")
    async with StubControlClient(address) as control:  # not get_ledgers: its merge_ledgers drops the state fields
        ledgers = await control.get_ledgers(["o-approved", "o-rejected", "o-pending"])
    assert ledgers["o-pending"].order_state == APPROVED
    assert ledgers["o-rejected"].order_state == REJECTED


async def test_states_survive_a_stop_and_start(data_dir: Path) -> None:
    async with running_stubs(data_dir) as stubs:
        await make_states(stubs.address)
    async with running_stubs(data_dir) as stubs:
        await check_states(stubs.address)


async def test_states_survive_sigkill_of_the_process(tmp_path: Path) -> None:
    with StubProcess(tmp_path / "stubs") as proc:
        await make_states(proc.address)
        await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(proc.start)
        await check_states(proc.address)


# ---------------------------------------------------------------- long-running final steps


async def test_a_long_running_approval_holds_off_the_cancellation_until_it_is_done(
    shop: ShopClient, control: StubControlClient
) -> None:
    await shop.create_order("o-1", key="c", lines=[("lro-approve-1s-sku", 1)])
    accepted = await approve(shop, "o-1", key="a")
    assert not accepted.operation.done and accepted.operation.name == "a"
    assert (await approve(shop, "o-1", key="a")).operation.done is False  # a retry: still in progress
    assert (await get_order(shop, "o-1")).state == PENDING
    error = await rpc_error(
        shop.compensate("order", "o-1", key="x", forward_key="c"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "becoming APPROVED" in (error.details() or "")
    reply = await shop.wait_done("order", "a")
    response = order_pb2.ApproveOrderResponse()
    assert reply.code == "OK" and reply.response.Unpack(response) and response.state == APPROVED
    final = await approve(shop, "o-1", key="a")
    assert (final.state, final.operation.done) == (APPROVED, True)
    assert (await get_order(shop, "o-1")).state == APPROVED
    assert (await control.get_operation_stats())["ApproveOrder"] == (1, 1, 0)


async def test_long_running_confirmation_and_dispatch(shop: ShopClient, control: StubControlClient) -> None:
    await shop.reserve("o-1", key="r", lines=[("lro-confirm-0s-sku", 1)])
    assert not (await confirm(shop, "o-1", key="cr")).operation.done
    assert (await get_reservation(shop, "o-1")).state == SOLD  # due at once: the read finishes it
    await shop.schedule("o-2", key="s", lines=[("lro-dispatch-never-sku", 1)])
    assert not (await release_shipment(shop, "o-2", key="rs")).operation.done
    await rpc_error(shop.compensate("shipping", "o-2", key="x", forward_key="s"), grpc.StatusCode.FAILED_PRECONDITION)
    assert (await get_shipment(shop, "o-2")).state == SCHEDULED
    # A rule out of bounds is refused with the forward call, not later with its final step.
    error = await rpc_error(
        shop.create_order("o-3", key="c3", lines=[("lro-approve-99999999s", 1)]), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "items[0].item_id" in (error.details() or "")


async def test_a_long_running_approval_finishes_after_a_restart(data_dir: Path) -> None:
    async with running_stubs(data_dir) as stubs, ShopClient(stubs.address) as shop:
        await shop.create_order("o-1", key="c", lines=[("lro-approve-1s-sku", 1)])
        assert not (await approve(shop, "o-1", key="a")).operation.done
    async with running_stubs(data_dir) as stubs, ShopClient(stubs.address) as shop:
        assert (await shop.wait_done("order", "a")).code == "OK"
        assert (await get_order(shop, "o-1")).state == APPROVED
        await rpc_error(shop.compensate("order", "o-1", key="x", forward_key="c"), grpc.StatusCode.FAILED_PRECONDITION)
