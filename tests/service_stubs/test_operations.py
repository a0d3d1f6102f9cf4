"""Long-running operations on a real stub server: accepted, polled, finished once by themselves, cancelled by their
compensation, and GetOperation for every kind of key. Waits are bounded generously (the suite runs on busy machines)
and never depend on exact timing: "finishes after N s" is checked as "not before acceptance + N s"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from protos.shop.v1 import common_pb2, inventory_pb2, payment_pb2
from service_stubs import TOMBSTONED_MESSAGE, StubServer
from tests.helpers.stubs import ShopClient, StubControlClient, fault_rule
from tests.service_stubs.conftest import rpc_error

IN_PROGRESS = common_pb2.OPERATION_STATE_IN_PROGRESS
DONE = common_pb2.OPERATION_STATE_DONE
NOT_FOUND = common_pb2.OPERATION_STATE_NOT_FOUND
UNKNOWN = common_pb2.OPERATION_STATE_UNKNOWN

Forward = Callable[[ShopClient, str, str, str], Awaitable[Any]]

# service -> (forward call taking a rule word, the forward's rule word, the compensation's rule word)
FORWARDS: dict[str, tuple[Forward, str, str]] = {
    "order": (lambda shop, o, key, rule: shop.create_order(o, key=key, lines=[(rule, 1)]), "create", "cancelorder"),
    "inventory": (lambda shop, o, key, rule: shop.reserve(o, key=key, lines=[(rule, 2)]), "reserve", "release"),
    "payment": (
        lambda shop, o, key, rule: shop.charge(o, key=key, token=f"tok_{rule}", amount_cents=700),
        "charge",
        "refund",
    ),
    "shipping": (lambda shop, o, key, rule: shop.schedule(o, key=key, lines=[(rule, 1)]), "schedule", "cancel"),
    "loyalty": (lambda shop, o, key, rule: shop.award(o, key=key, user_id=f"u-{rule}", points=50), "award", "revoke"),
}


def effect(ledger: Any) -> tuple[object, ...]:
    return (
        ledger.order_created and not ledger.order_cancelled,
        dict(ledger.reserved_net),
        ledger.charged_cents - ledger.refunded_cents,
        ledger.shipment_scheduled and not ledger.shipment_cancelled,
        sum(p.awarded - p.revoked for p in ledger.points),
    )


NOTHING: tuple[object, ...] = (False, {}, 0, False, 0)


def keys(ledger: Any) -> dict[str, tuple[int, bool, str]]:
    """key -> (applied_count, in_progress, code)"""
    return {k.idempotency_key: (k.applied_count, k.in_progress, k.code) for k in ledger.keys}


async def test_a_long_running_charge_is_accepted_then_applied_once(
    shop: ShopClient, control: StubControlClient
) -> None:
    accepted_at = time.time()
    first = await shop.charge("o-1", key="ch", token="tok_lro-charge-1s", amount_cents=1_500)
    assert first.operation.name == "ch" and not first.operation.done
    assert 0 < first.operation.poll_after_ms <= 1_000
    assert first.charge_id == ""  # not meaningful yet

    ledger = await control.get_ledger("o-1")
    assert ledger.charged_cents == 0
    assert keys(ledger) == {"ch": (0, True, "")}
    again = await shop.charge("o-1", key="ch", token="tok_lro-charge-1s", amount_cents=1_500)
    assert again.operation.name == "ch" and not again.operation.done  # the retry: same answer, nothing new
    state = await shop.get_operation("payment", "ch")
    if state.state == IN_PROGRESS:  # (the machine may be slow enough for it to be done already)
        assert state.method == "ChargePayment" and 0 < state.poll_after_ms <= 1_000 and not state.code

    done = await shop.wait_done("payment", "ch")
    assert time.time() - accepted_at >= 1.0 - 0.05  # never early (wall clock; a little slack for rounding to ms)
    assert (done.code, done.message, done.method) == ("OK", "", "ChargePayment")
    charge = payment_pb2.ChargePaymentResponse()
    assert done.response.Unpack(charge)
    assert charge.charge_id.startswith("ch_") and charge.operation.name == "ch" and charge.operation.done

    final = await shop.charge("o-1", key="ch", token="tok_lro-charge-1s", amount_cents=1_500)
    assert final == charge  # a retry now gets the recorded final answer
    ledger = await control.get_ledger("o-1")
    assert ledger.charged_cents == 1_500
    assert keys(ledger) == {"ch": (1, False, "OK")}
    assert (await control.get_operation_stats())["ChargePayment"] == (1, 1, 0)
    assert (await control.get_stats())[("ChargePayment", "OK")] == 3


async def test_it_finishes_by_itself_without_anyone_asking(shop: ShopClient, control: StubControlClient) -> None:
    await shop.reserve("o-1", key="r", lines=[("lro-reserve-1s-sku", 3)])
    for _ in range(300):  # the ledger is StubControl's: nobody calls Inventory again
        if (await control.get_ledger("o-1")).reserved_net:
            break
        await asyncio.sleep(0.1)
    ledger = await control.get_ledger("o-1")
    assert dict(ledger.reserved_net) == {"lro-reserve-1s-sku": 3}
    assert keys(ledger) == {"r": (1, False, "OK")}
    stats = await control.get_stats()
    assert not [method for method, _ in stats if method.endswith("GetOperation")]


async def test_zero_seconds_is_done_at_the_first_poll(shop: ShopClient) -> None:
    reply = await shop.schedule("o-1", key="s", lines=[("lro-schedule-0s-box", 1)])
    assert not reply.operation.done
    state = await shop.get_operation("shipping", "s")
    assert (state.state, state.code) == (DONE, "OK")


@pytest.mark.parametrize("service", sorted(FORWARDS))
async def test_a_compensation_cancels_its_forward_operation(
    shop: ShopClient, control: StubControlClient, service: str
) -> None:
    call, word, _ = FORWARDS[service]
    rule = f"lro-{word}-never"
    accepted = await call(shop, "o-c", "fwd", rule)
    assert accepted.operation.name == "fwd" and not accepted.operation.done
    assert (await shop.get_operation(service, "fwd")).state == IN_PROGRESS

    reply = await shop.compensate(service, "o-c", key="comp", forward_key="fwd")
    assert reply.tombstoned and not reply.undone and not reply.HasField("operation")
    state = await shop.get_operation(service, "fwd")
    assert (state.state, state.code, state.message) == (DONE, "ABORTED", TOMBSTONED_MESSAGE)
    assert not state.HasField("response")
    error = await rpc_error(call(shop, "o-c", "fwd", rule), grpc.StatusCode.ABORTED)
    assert error.details() == TOMBSTONED_MESSAGE

    ledger = await control.get_ledger("o-c")
    assert effect(ledger) == NOTHING
    assert keys(ledger) == {"fwd": (0, False, "ABORTED"), "comp": (1, False, "OK")}
    assert [k.tombstoned for k in ledger.keys] == [True, False]
    forward_method = ledger.keys[0].method
    assert (await control.get_operation_stats())[forward_method] == (1, 0, 1)


async def test_never_stays_in_progress(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-n", key="ch", token="tok_lro-charge-never")
    await asyncio.sleep(1.2)
    state = await shop.get_operation("payment", "ch")
    assert (state.state, state.poll_after_ms) == (IN_PROGRESS, 1_000)
    assert keys(await control.get_ledger("o-n")) == {"ch": (0, True, "")}


async def test_a_long_running_refund_settles_later_and_applies_once(
    shop: ShopClient, control: StubControlClient
) -> None:
    charge = await shop.charge("o-r", key="ch", token="tok_lro-refund-1s", amount_cents=2_000)
    assert charge.charge_id and not charge.HasField("operation")  # the charge itself is immediate
    refund = await shop.compensate("payment", "o-r", key="refund", forward_key="ch")
    assert refund.operation.name == "refund" and not refund.operation.done
    assert not refund.undone and not refund.tombstoned  # not meaningful yet
    ledger = await control.get_ledger("o-r")
    assert (ledger.charged_cents, ledger.refunded_cents) == (2_000, 0)
    assert keys(ledger) == {"ch": (1, False, "OK"), "refund": (0, True, "")}
    # The retry, and a second refund under another key meanwhile: neither applies anything more.
    assert not (await shop.compensate("payment", "o-r", key="refund", forward_key="ch")).operation.done
    assert not (await shop.compensate("payment", "o-r", key="refund-2", forward_key="ch")).operation.done

    done = await shop.wait_done("payment", "refund")
    assert (done.code, done.method) == ("OK", "RefundPayment")
    settled = common_pb2.CompensationResponse()
    assert done.response.Unpack(settled)
    assert settled.undone and settled.operation.done
    await shop.wait_done("payment", "refund-2")
    assert (await shop.compensate("payment", "o-r", key="refund", forward_key="ch")) == settled
    ledger = await control.get_ledger("o-r")
    assert (ledger.charged_cents, ledger.refunded_cents) == (2_000, 2_000)
    assert keys(ledger) == {"ch": (1, False, "OK"), "refund": (1, False, "OK"), "refund-2": (0, False, "OK")}
    assert (await control.get_operation_stats())["RefundPayment"] == (2, 2, 0)


@pytest.mark.parametrize("service", sorted(FORWARDS))
async def test_every_compensation_can_be_long_running(
    shop: ShopClient, control: StubControlClient, service: str
) -> None:
    call, _, word = FORWARDS[service]
    await call(shop, "o-u", "fwd", f"lro-{word}-0s")
    reply = await shop.compensate(service, "o-u", key="comp", forward_key="fwd")
    assert not reply.operation.done
    done = await shop.wait_done(service, "comp")
    settled = common_pb2.CompensationResponse()
    assert done.response.Unpack(settled) and settled.undone
    assert effect(await control.get_ledger("o-u")) == NOTHING


async def test_a_compensation_of_a_due_forward_undoes_it(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-d", key="ch", token="tok_lro-charge-0s", amount_cents=300)
    # Due at once: the refund finds it finished (applied), not in progress, and refunds it.
    reply = await shop.compensate("payment", "o-d", key="refund", forward_key="ch")
    assert reply.undone and not reply.tombstoned
    ledger = await control.get_ledger("o-d")
    assert (ledger.charged_cents, ledger.refunded_cents) == (300, 300)


async def test_a_business_rejection_comes_when_the_operation_finishes(
    shop: ShopClient, control: StubControlClient
) -> None:
    item = "sold-out-lro-reserve-0s"
    accepted = await shop.reserve("o-s", key="r", lines=[(item, 1)])
    assert not accepted.operation.done
    done = await shop.wait_done("inventory", "r")
    assert (done.code, done.method) == ("FAILED_PRECONDITION", "ReserveInventory")
    assert "insufficient stock" in done.message and not done.HasField("response")
    await rpc_error(shop.reserve("o-s", key="r", lines=[(item, 1)]), grpc.StatusCode.FAILED_PRECONDITION)
    reply = await shop.compensate("inventory", "o-s", key="rel", forward_key="r")
    assert reply.tombstoned and not reply.HasField("operation")  # nothing to undo: at once
    assert keys(await control.get_ledger("o-s")) == {"r": (0, False, "FAILED_PRECONDITION"), "rel": (1, False, "OK")}


async def test_a_key_reused_with_another_request_while_in_progress(shop: ShopClient) -> None:
    await shop.charge("o-1", key="ch", token="tok_lro-charge-never", amount_cents=5)
    await rpc_error(
        shop.charge("o-1", key="ch", token="tok_lro-charge-never", amount_cents=6), grpc.StatusCode.ALREADY_EXISTS
    )


async def test_reply_lost_after_acceptance(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_faults([fault_rule("ChargePayment", apply_then_fail_rate=1.0)], seed=1)
    await rpc_error(
        shop.charge("o-l", key="ch", token="tok_lro-charge-0s", amount_cents=40), grpc.StatusCode.UNAVAILABLE
    )
    await control.clear_faults()
    done = await shop.wait_done("payment", "ch")  # accepted durably all the same, and finished
    assert done.code == "OK"
    assert (await control.get_ledger("o-l")).charged_cents == 40
    assert (await control.get_operation_stats())["ChargePayment"] == (1, 1, 0)


async def test_get_operation_answers_for_every_kind_of_key(shop: ShopClient, stubs: StubServer) -> None:
    assert (await shop.get_operation("payment", "never-seen")).state == NOT_FOUND

    reserved = await shop.reserve("o-1", key="r-sync", lines=[("sku-1", 1)])
    state = await shop.get_operation("inventory", "r-sync")  # not long-running: DONE all the same
    assert (state.state, state.code, state.method) == (DONE, "OK", "ReserveInventory")
    reservation = inventory_pb2.ReserveInventoryResponse()
    assert state.response.Unpack(reservation) and reservation == reserved
    assert (await shop.get_operation("payment", "r-sync")).state == NOT_FOUND  # another service's key

    await rpc_error(shop.charge("o-2", key="declined", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    state = await shop.get_operation("payment", "declined")
    assert (state.state, state.code, state.message) == (DONE, "FAILED_PRECONDITION", "payment declined")

    await shop.compensate("payment", "o-3", key="refund", forward_key="lost-charge")
    state = await shop.get_operation("payment", "lost-charge")  # tombstoned before it ever arrived
    assert (state.state, state.code, state.method) == (DONE, "ABORTED", "ChargePayment")
    state = await shop.get_operation("payment", "refund")
    tombstoned = common_pb2.CompensationResponse()
    assert state.response.Unpack(tombstoned) and tombstoned.tombstoned and state.method == "RefundPayment"


async def test_get_operation_cannot_say_while_a_call_is_being_served(
    shop: ShopClient, control: StubControlClient
) -> None:
    slow = asyncio.create_task(shop.charge("o-1", key="slow", token="tok_slow", amount_cents=9))
    await asyncio.sleep(0.3)  # inside tok_slow's 2 s wait: no record yet, the outcome is open
    state = await shop.get_operation("payment", "slow")
    assert state.state == UNKNOWN and not state.method
    await slow
    assert (await shop.get_operation("payment", "slow")).code == "OK"


async def test_get_operation_is_validated_counted_and_faulted(shop: ShopClient, control: StubControlClient) -> None:
    await rpc_error(shop.get_operation("payment", ""), grpc.StatusCode.INVALID_ARGUMENT)
    await rpc_error(shop.get_operation("payment", "k" * 513), grpc.StatusCode.INVALID_ARGUMENT)
    await shop.get_operation("payment", "k")
    await shop.get_operation("order", "k")
    stats = await control.get_stats()
    assert stats[("/shop.v1.PaymentService/GetOperation", "INVALID_ARGUMENT")] == 2
    assert stats[("/shop.v1.PaymentService/GetOperation", "OK")] == 1
    assert stats[("/shop.v1.OrderService/GetOperation", "OK")] == 1
    await control.set_faults([fault_rule("/shop.v1.OrderService/GetOperation", error_rate=1.0)], seed=3)
    await rpc_error(shop.get_operation("order", "k"), grpc.StatusCode.UNAVAILABLE)
    await shop.get_operation("payment", "k")
    # By the order of the key asked about: a key never seen has none, so only the known one fails.
    await shop.charge("o-bad", key="ch", amount_cents=1)
    await control.set_faults([fault_rule("GetOperation", order_id_prefix="o-bad", error_rate=1.0)], seed=3)
    await rpc_error(shop.get_operation("payment", "ch"), grpc.StatusCode.UNAVAILABLE)
    assert (await shop.get_operation("payment", "unknown")).state == NOT_FOUND


async def test_a_rule_out_of_bounds_is_invalid_and_names_the_field(shop: ShopClient) -> None:
    error = await rpc_error(
        shop.reserve("o-1", key="r", lines=[("sku", 1), ("lro-reserve-999999s", 1)]), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "items[1].item_id" in (error.details() or "")


async def test_requests_without_rules_answer_as_before(shop: ShopClient, control: StubControlClient) -> None:
    charge = await shop.charge("o-1", key="ch", token="tok_visa", amount_cents=10)
    refund = await shop.compensate("payment", "o-1", key="refund", forward_key="ch")
    assert not charge.HasField("operation") and not refund.HasField("operation")
    assert (await control.get_operation_stats()) == {}
