"""Compensation before forward: tombstones, exact undo, and forward calls that wake up too late."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from common.rpc_errors import TOMBSTONED, error_reason
from service_stubs import TOMBSTONED_MESSAGE, StubServer
from tests.helpers.stubs import ShopClient, StubControlClient, keys_locked
from tests.service_stubs.conftest import rpc_error

Forward = Callable[[ShopClient, str, str], Awaitable[Any]]

FORWARDS: dict[str, Forward] = {
    "order": lambda shop, order_id, key: shop.create_order(order_id, key=key),
    "inventory": lambda shop, order_id, key: shop.reserve(order_id, key=key, lines=[("sku-t", 2)]),
    "payment": lambda shop, order_id, key: shop.charge(order_id, key=key, amount_cents=900),
    "shipping": lambda shop, order_id, key: shop.schedule(order_id, key=key),
    "loyalty": lambda shop, order_id, key: shop.award(order_id, key=key, points=300),
}


def effect(ledger: Any) -> tuple[object, ...]:
    return (
        ledger.order_created,
        dict(ledger.reserved_net),
        ledger.charged_cents,
        ledger.refunded_cents,
        ledger.shipment_scheduled,
        [(p.awarded, p.revoked) for p in ledger.points],
    )


NO_EFFECT: tuple[object, ...] = (False, {}, 0, 0, False, [])


@pytest.mark.parametrize("service", sorted(FORWARDS))
async def test_compensation_first_tombstones_and_the_late_forward_is_refused(
    shop: ShopClient, control: StubControlClient, service: str
) -> None:
    reply = await shop.compensate(service, "o-late", key="comp", forward_key="fwd")
    assert reply.tombstoned and not reply.undone

    for _ in range(2):  # the late forward and its retry: refused, nothing applied
        error = await rpc_error(FORWARDS[service](shop, "o-late", "fwd"), grpc.StatusCode.ABORTED)
        assert error.details() == TOMBSTONED_MESSAGE
        assert error_reason(error) == TOMBSTONED  # final: a caller must not retry it (DESIGN contract 3)

    ledger = await control.get_ledger("o-late")
    assert effect(ledger) == NO_EFFECT
    records = {key.idempotency_key: key for key in ledger.keys}
    assert records["fwd"].tombstoned and records["fwd"].applied_count == 0
    assert records["fwd"].code == "ABORTED"
    assert records["comp"].code == "OK" and not records["comp"].tombstoned


@pytest.mark.parametrize("service", sorted(FORWARDS))
async def test_compensation_after_forward_undoes_it(shop: ShopClient, control: StubControlClient, service: str) -> None:
    await FORWARDS[service](shop, "o-undo", "fwd")
    reply = await shop.compensate(service, "o-undo", key="comp", forward_key="fwd")
    assert reply.undone and not reply.tombstoned
    ledger = await control.get_ledger("o-undo")
    assert ledger.order_created == ledger.order_cancelled
    assert ledger.shipment_scheduled == ledger.shipment_cancelled
    assert not ledger.reserved_net
    assert ledger.charged_cents == ledger.refunded_cents
    assert all(p.awarded == p.revoked for p in ledger.points)
    assert [key.applied_count for key in ledger.keys] == [1, 1]


async def test_release_puts_back_exactly_what_was_reserved(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_stock({"sku-a": 5, "sku-b": 3})
    await shop.reserve("o-1", key="r1", lines=[("sku-a", 3), ("sku-b", 1), ("sku-a", 1)])
    assert dict((await control.get_ledger("o-1")).reserved_net) == {"sku-a": 4, "sku-b": 1}
    await shop.compensate("inventory", "o-1", key="rel1", forward_key="r1")
    # Everything is back: the whole stock can be reserved again, and not one unit more.
    await rpc_error(shop.reserve("o-2", key="r2", lines=[("sku-a", 6)]), grpc.StatusCode.FAILED_PRECONDITION)
    await shop.reserve("o-2", key="r3", lines=[("sku-a", 5), ("sku-b", 3)])


async def test_compensation_of_a_rejected_forward_tombstones_and_keeps_the_first_answer(
    shop: ShopClient, control: StubControlClient
) -> None:
    await rpc_error(shop.charge("o-d", key="fwd", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    reply = await shop.compensate("payment", "o-d", key="comp", forward_key="fwd")
    assert reply.tombstoned
    await rpc_error(shop.charge("o-d", key="fwd", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    ledger = await control.get_ledger("o-d")
    assert ledger.charged_cents == 0
    assert {k.idempotency_key: (k.code, k.tombstoned) for k in ledger.keys} == {
        "fwd": ("FAILED_PRECONDITION", True),
        "comp": ("OK", False),
    }


async def test_compensation_naming_another_orders_key_is_refused(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-a", key="fwd", amount_cents=100)
    await rpc_error(
        shop.compensate("payment", "o-b", key="comp", forward_key="fwd"), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (await control.get_ledger("o-a")).refunded_cents == 0


async def test_slow_charge_is_refused_when_the_refund_lands_during_its_wait(
    shop: ShopClient, control: StubControlClient
) -> None:
    charge = asyncio.create_task(shop.charge("o-slow", key="fwd", token="tok_slow", amount_cents=2_500))
    await asyncio.sleep(0.3)  # the charge is now inside its 2 s wait
    started = time.monotonic()
    refund = await shop.compensate("payment", "o-slow", key="comp", forward_key="fwd")
    assert refund.tombstoned
    assert time.monotonic() - started < 1.0, "the refund waited behind the slow charge"
    error = await rpc_error(charge, grpc.StatusCode.ABORTED)
    assert error.details() == TOMBSTONED_MESSAGE
    ledger = await control.get_ledger("o-slow")
    assert (ledger.charged_cents, ledger.refunded_cents) == (0, 0)


async def test_slow_charge_without_refund_charges(
    shop: ShopClient, control: StubControlClient, stubs: StubServer
) -> None:
    # The wait is configurable for other suites; here it must be the documented 2 s.
    assert stubs.config.slow_token_delay_s == 2.0
    started = time.monotonic()
    await shop.charge("o-slow2", key="fwd", token="tok_slow", amount_cents=10)
    assert time.monotonic() - started >= 2.0
    assert (await control.get_ledger("o-slow2")).charged_cents == 10


async def test_hanging_charge_ends_at_the_deadline_with_nothing_applied(
    shop: ShopClient, control: StubControlClient
) -> None:
    await rpc_error(
        shop.charge("o-hang", key="fwd", token="tok_hang", timeout_s=0.3), grpc.StatusCode.DEADLINE_EXCEEDED
    )
    ledger = await control.get_ledger("o-hang")
    assert ledger.charged_cents == 0 and not ledger.keys
    assert (await control.get_stats())[("ChargePayment", "HANG")] == 1


async def test_refund_does_not_wait_behind_a_hanging_charge(
    shop: ShopClient, control: StubControlClient, stubs: StubServer
) -> None:
    charge = asyncio.create_task(shop.charge("o-hang", key="fwd", token="tok_hang", timeout_s=5.0))
    await asyncio.sleep(0.2)
    refund = await shop.compensate("payment", "o-hang", key="comp", forward_key="fwd", timeout_s=1.0)
    assert refund.tombstoned
    charge.cancel()
    with pytest.raises(asyncio.CancelledError):
        await charge
    # Once tombstoned, the key is refused at once, even with the hanging token.
    await rpc_error(shop.charge("o-hang", key="fwd", token="tok_hang", timeout_s=2.0), grpc.StatusCode.ABORTED)
    assert (await control.get_ledger("o-hang")).charged_cents == 0
    assert keys_locked(stubs.services["payment"].keys) == 0
