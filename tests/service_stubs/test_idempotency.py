"""Idempotency keys: a key applies once and replays its first answer, under concurrency too."""

from __future__ import annotations

import asyncio

import grpc

from protos.shop.v1 import payment_pb2
from service_stubs import DECLINED_MESSAGE, StubServer
from tests.helpers.stubs import ShopClient, StubControlClient, keys_locked
from tests.service_stubs.conftest import rpc_error


async def test_fifty_concurrent_duplicate_reservations_apply_once(
    shop: ShopClient, control: StubControlClient, stubs: StubServer
) -> None:
    await control.set_stock({"sku-dup": 100})
    replies = await asyncio.gather(*(shop.reserve("o-dup", key="k-dup", lines=[("sku-dup", 10)]) for _ in range(50)))
    assert len({reply.reservation_id for reply in replies}) == 1
    assert keys_locked(stubs.services["inventory"].keys) == 0

    ledger = await control.get_ledger("o-dup")
    assert dict(ledger.reserved_net) == {"sku-dup": 10}
    [record] = ledger.keys
    assert (record.service, record.method, record.applied_count, record.code) == (
        "inventory",
        "ReserveInventory",
        1,
        "OK",
    )
    # Stock went down by 10 once: 90 left.
    await rpc_error(shop.reserve("o-more", key="k-91", lines=[("sku-dup", 91)]), grpc.StatusCode.FAILED_PRECONDITION)
    await shop.reserve("o-more", key="k-90", lines=[("sku-dup", 90)])


async def test_fifty_concurrent_duplicate_charges_apply_once(shop: ShopClient, control: StubControlClient) -> None:
    replies = await asyncio.gather(*(shop.charge("o-pay", key="k-pay", amount_cents=4_321) for _ in range(50)))
    assert len({reply.charge_id for reply in replies}) == 1
    ledger = await control.get_ledger("o-pay")
    assert ledger.charged_cents == 4_321
    assert [key.applied_count for key in ledger.keys] == [1]


async def test_same_key_with_another_request_is_already_exists(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-1", key="k-1", amount_cents=100)
    await rpc_error(shop.charge("o-1", key="k-1", amount_cents=200), grpc.StatusCode.ALREADY_EXISTS)
    # Another method of the same service shares its key space; other services have their own.
    await rpc_error(shop.compensate("payment", "o-1", key="k-1", forward_key="another"), grpc.StatusCode.ALREADY_EXISTS)
    assert (await control.get_ledger("o-1")).charged_cents == 100


async def test_rejection_is_replayed_with_the_same_status(shop: ShopClient, control: StubControlClient) -> None:
    first = await rpc_error(shop.charge("o-d", key="k-d", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    again = await rpc_error(shop.charge("o-d", key="k-d", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    assert first.details() == again.details() == DECLINED_MESSAGE
    [record] = (await control.get_ledger("o-d")).keys
    assert (record.applied_count, record.code) == (0, "FAILED_PRECONDITION")


async def test_compensation_replays_its_first_answer(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-r", key="charge", amount_cents=700)
    first = await shop.compensate("payment", "o-r", key="refund", forward_key="charge")
    again = await shop.compensate("payment", "o-r", key="refund", forward_key="charge")
    assert first == again
    assert first.undone and not first.tombstoned
    ledger = await control.get_ledger("o-r")
    assert (ledger.charged_cents, ledger.refunded_cents) == (700, 700)
    assert {(k.method, k.applied_count) for k in ledger.keys} == {("ChargePayment", 1), ("RefundPayment", 1)}


async def test_a_second_compensation_key_undoes_nothing_more(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-2", key="charge", amount_cents=500)
    await shop.compensate("payment", "o-2", key="refund-a", forward_key="charge")
    reply = await shop.compensate("payment", "o-2", key="refund-b", forward_key="charge")
    assert reply.undone
    ledger = await control.get_ledger("o-2")
    assert ledger.refunded_cents == 500
    assert {k.idempotency_key: k.applied_count for k in ledger.keys} == {"charge": 1, "refund-a": 1, "refund-b": 0}


async def test_missing_idempotency_key_is_invalid_argument(shop: ShopClient) -> None:
    request = payment_pb2.ChargePaymentRequest(
        order_id="o", user_id="u", payment_token="tok_ok", amount_cents=1, currency="EUR"
    )
    error = await rpc_error(shop.payment.ChargePayment(request, timeout=5), grpc.StatusCode.INVALID_ARGUMENT)
    assert "idempotency-key" in (error.details() or "")
