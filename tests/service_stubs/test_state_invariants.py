"""The semantic lock's invariants (service_stubs.invariants.state_violations): a ledger that breaks one is caught, the
ledgers the stubs produce for approved, rejected and pending orders pass, and so do the order flow's."""

from __future__ import annotations

import pytest

from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1.control_pb2 import OrderLedger
from protos.shop.v1 import order_pb2, shipping_pb2
from service_stubs.invariants import ledger_violations, state_violations
from tests.helpers.stubs import ShopClient, StubControlClient
from tests.service_stubs.conftest import approve, confirm, release_shipment
from tests.service_stubs.states import APPROVED, CANCELLED, HELD, REJECTED, RELEASED, SCHEDULED, SOLD, ledger


def approved(**fields: object) -> OrderLedger:
    return ledger(
        {
            "order_state": APPROVED,
            "charged_cents": 500,
            "reservation_state": SOLD,
            "reserved_net": {"sku": 1},
            "shipment_state": SCHEDULED,
        },
        fields,
    )


def rejected(**fields: object) -> OrderLedger:
    return ledger(
        {
            "order_state": REJECTED,
            "charged_cents": 500,
            "refunded_cents": 500,
            "reservation_state": RELEASED,
            "shipment_state": CANCELLED,
        },
        fields,
    )


@pytest.mark.parametrize(
    ("ledger", "says"),
    [
        (approved(refunded_cents=500), "APPROVED but charged 500 refunded 500"),
        (approved(charged_cents=0), "APPROVED but charged 0"),
        (approved(reservation_state=RELEASED), "APPROVED but reservation RESERVATION_STATE_RELEASED"),
        (approved(reservation_state=0), "APPROVED but reservation RESERVATION_STATE_UNSPECIFIED"),
        (approved(shipment_state=CANCELLED), "APPROVED but its shipment is cancelled"),
        (rejected(reservation_state=HELD, reserved_net={"sku": 1}), "REJECTED but reservation RESERVATION_STATE_HELD"),
        (rejected(reserved_net={"sku": 1}), "REJECTED but still reserved {'sku': 1}"),
        (rejected(refunded_cents=0), "REJECTED but charged 500 refunded 0"),
        (rejected(shipment_state=SCHEDULED), "REJECTED but shipment SHIPMENT_STATE_SCHEDULED"),
    ],
)
def test_a_violating_ledger_is_caught(ledger: OrderLedger, says: str) -> None:
    violations = state_violations("o", ledger)
    assert any(says in v for v in violations), violations
    # ledger_violations includes them, whatever the saga's status.
    assert any(says in v for v in ledger_violations("o", saga_pb2.SUCCESS, ledger))


@pytest.mark.parametrize(
    "ledger",
    [
        approved(),
        approved(reservation_state=HELD, shipment_state=shipping_pb2.SHIPMENT_STATE_RELEASED),
        approved(shipment_state=0),
        rejected(),
        rejected(charged_cents=0, refunded_cents=0, reservation_state=0, shipment_state=0),
        OrderLedger(order_id="o", order_state=order_pb2.ORDER_STATE_PENDING, reservation_state=HELD),
        OrderLedger(order_id="o"),
    ],
)
def test_a_consistent_ledger_passes(ledger: OrderLedger) -> None:
    assert state_violations("o", ledger) == []


async def test_ledgers_of_real_orders_pass(shop: ShopClient, control: StubControlClient) -> None:
    for order_id in ("o-ok", "o-undone", "o-flow"):
        await shop.create_order(order_id, key=f"c-{order_id}")
        await shop.reserve(order_id, key=f"r-{order_id}")
        await shop.charge(order_id, key=f"p-{order_id}")
        await shop.schedule(order_id, key=f"s-{order_id}")
    await approve(shop, "o-ok", key="a")
    await confirm(shop, "o-ok", key="cr")
    await release_shipment(shop, "o-ok", key="rs")
    for service, forward in (("shipping", "s"), ("payment", "p"), ("inventory", "r"), ("order", "c")):
        await shop.compensate(service, "o-undone", key=f"{forward}-undo", forward_key=f"{forward}-o-undone")
    ledgers = await control.get_ledgers(["o-ok", "o-undone", "o-flow"])
    assert ledgers["o-ok"].order_state == APPROVED and ledgers["o-undone"].order_state == REJECTED
    assert ledger_violations("o-ok", saga_pb2.SUCCESS, ledgers["o-ok"], {"sku-1": 1}) == []
    assert ledger_violations("o-undone", saga_pb2.FAILED, ledgers["o-undone"]) == []
    # Version 1 of the order flow: a success leaves the order PENDING, and only the old invariants apply.
    assert ledgers["o-flow"].order_state == order_pb2.ORDER_STATE_PENDING
    assert ledger_violations("o-flow", saga_pb2.SUCCESS, ledgers["o-flow"], {"sku-1": 1}) == []
