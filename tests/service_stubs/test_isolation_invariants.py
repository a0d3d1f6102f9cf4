"""The isolation countermeasures' checks (service_stubs.invariants), one per countermeasure: each catches a hand-built
ledger (or reader's history) that breaks it, and passes what the isolated order flow leaves when it is right."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protos.service_stubs.v1.control_pb2 import OrderLedger
from service_stubs.invariants import (
    isolation_violations,
    order_lock_violations,
    order_read_violations,
    pivot_violations,
    reservation_violations,
    shipment_gate_violations,
    stock_violations,
)
from tests.service_stubs.states import (
    APPROVED,
    CANCELLED,
    DEAD,
    FAILED,
    HELD,
    NO_SAGA,
    NONE,
    PENDING,
    REJECTED,
    RELEASED,
    RUNNING,
    SCHEDULED,
    SHIPPED,
    SOLD,
    SUCCEEDED,
    ledger,
)

Check = Callable[[str, OrderLedger, int], list[str]]


def approved(**fields: object) -> OrderLedger:
    """What a SUCCEEDED saga of the isolated flow leaves."""
    return ledger(
        {
            "order_state": APPROVED,
            "charged_cents": 500,
            "reservation_state": SOLD,
            "reserved_net": {"sku": 1},
            "shipment_state": SHIPPED,
        },
        fields,
    )


def rejected(**fields: object) -> OrderLedger:
    """What a FAILED saga of the isolated flow leaves when the payment was declined (so nothing to refund)."""
    return ledger(
        {
            "order_state": REJECTED,
            "reservation_state": RELEASED,
            "shipment_state": CANCELLED,
        },
        fields,
    )


def pending(**fields: object) -> OrderLedger:
    """A saga in flight, charged, about to approve."""
    return ledger(
        {
            "order_state": PENDING,
            "charged_cents": 500,
            "reservation_state": HELD,
            "reserved_net": {"sku": 1},
            "shipment_state": SCHEDULED,
        },
        fields,
    )


@pytest.mark.parametrize(
    ("check", "ledger", "saga", "says"),
    [
        # The semantic lock on orders: the order's state says what the saga did.
        (
            order_lock_violations,
            approved(order_state=PENDING),
            SUCCEEDED,
            "saga SUCCEEDED but order ORDER_STATE_PENDING",
        ),
        (order_lock_violations, rejected(order_state=APPROVED), FAILED, "saga FAILED but order ORDER_STATE_APPROVED"),
        (order_lock_violations, rejected(order_state=PENDING), FAILED, "saga FAILED but order ORDER_STATE_PENDING"),
        (order_lock_violations, rejected(), SUCCEEDED, "saga SUCCEEDED but order ORDER_STATE_REJECTED"),
        # Commutative stock, one order: nothing left HELD, SOLD only when approved, nothing reserved when rejected.
        (reservation_violations, approved(reservation_state=HELD), SUCCEEDED, "saga SUCCEEDED but reservation"),
        (reservation_violations, rejected(reservation_state=HELD, reserved_net={"sku": 1}), FAILED, "REJECTED but"),
        (reservation_violations, rejected(reservation_state=0, reserved_net={"sku": 1}), FAILED, "still reserved"),
        (reservation_violations, pending(reservation_state=SOLD), RUNNING, "reservation SOLD but order"),
        (reservation_violations, rejected(reserved_net={"sku": -1}), FAILED, "more released than reserved"),
        (reservation_violations, approved(reservation_state=RELEASED), RUNNING, "APPROVED but reservation"),
        # The pivot: nothing after the charge without a charge that stands; a rejected order keeps no money.
        (pivot_violations, approved(refunded_cents=500), SUCCEEDED, "APPROVED but charged 500 refunded 500"),
        (pivot_violations, approved(charged_cents=0), DEAD, "APPROVED but charged 0"),
        (pivot_violations, pending(reservation_state=SOLD, charged_cents=0), RUNNING, "reservation SOLD but charged"),
        (pivot_violations, pending(shipment_state=SHIPPED, refunded_cents=500), RUNNING, "shipment RELEASED but"),
        (pivot_violations, rejected(charged_cents=500), FAILED, "REJECTED but charged 500 refunded 0"),
        (pivot_violations, pending(order_state=NONE, charged_cents=500), FAILED, "saga FAILED but charged 500"),
        (pivot_violations, pending(charged_cents=0), SUCCEEDED, "saga SUCCEEDED but charged 0"),
        # The shipment release gate: the carrier sees only approved orders' shipments.
        (shipment_gate_violations, pending(shipment_state=SHIPPED), RUNNING, "shipment RELEASED but order"),
        (shipment_gate_violations, rejected(shipment_state=SHIPPED), FAILED, "shipment RELEASED but order"),
        (shipment_gate_violations, rejected(shipment_state=SCHEDULED), FAILED, "REJECTED but shipment"),
        (shipment_gate_violations, approved(shipment_state=CANCELLED), SUCCEEDED, "APPROVED but its shipment is"),
        (shipment_gate_violations, approved(shipment_state=SCHEDULED), SUCCEEDED, "saga SUCCEEDED but shipment"),
        (shipment_gate_violations, pending(order_state=NONE), FAILED, "saga FAILED but shipment"),
    ],
)
def test_each_countermeasure_catches_a_ledger_that_breaks_it(
    check: Check, ledger: OrderLedger, saga: int, says: str
) -> None:
    violations = check("o", ledger, saga)
    assert any(says in v for v in violations), violations
    # The combined check reports it too.
    assert any(says in v for v in isolation_violations("o", saga, ledger)), isolation_violations("o", saga, ledger)


@pytest.mark.parametrize(
    ("saga", "ledger"),
    [
        (SUCCEEDED, approved()),
        (FAILED, rejected()),
        # Declined after the charge was attempted and refunded; or refused at reserve (nothing held, nothing charged).
        (FAILED, rejected(charged_cents=500, refunded_cents=500)),
        (FAILED, rejected(reservation_state=0, shipment_state=0)),
        # Its CreateOrder never applied: no order at all.
        (FAILED, OrderLedger(order_id="o")),
        (RUNNING, pending()),
        (RUNNING, approved(reservation_state=HELD, shipment_state=SCHEDULED)),
        # Parked after the pivot: approved and paid, the units still held, for an operator to resume.
        (DEAD, approved(reservation_state=HELD, shipment_state=SCHEDULED)),
        (NO_SAGA, OrderLedger(order_id="o")),
    ],
)
def test_what_the_isolated_flow_leaves_passes(saga: int, ledger: OrderLedger) -> None:
    assert isolation_violations("o", saga, ledger, [NONE, PENDING, ledger.order_state or PENDING]) == []


@pytest.mark.parametrize(
    ("seen", "says"),
    [
        ([PENDING, APPROVED, REJECTED], "saw ORDER_STATE_APPROVED then ORDER_STATE_REJECTED"),
        ([REJECTED, APPROVED], "saw ORDER_STATE_REJECTED then ORDER_STATE_APPROVED"),
        ([APPROVED, PENDING], "saw ORDER_STATE_APPROVED then ORDER_STATE_PENDING"),
        ([REJECTED, PENDING], "saw ORDER_STATE_REJECTED then ORDER_STATE_PENDING"),
        ([PENDING, NONE], "saw ORDER_STATE_PENDING then ORDER_STATE_UNSPECIFIED"),
    ],
)
def test_a_reader_seeing_an_order_move_backwards_is_caught(seen: list[int], says: str) -> None:
    violations = order_read_violations("o", seen)
    assert any(says in v for v in violations), violations
    assert any(says in v for v in isolation_violations("o", RUNNING, pending(), seen))


@pytest.mark.parametrize(
    "seen", [[], [NONE], [NONE, PENDING, APPROVED], [PENDING, REJECTED], [NONE, REJECTED], [APPROVED, APPROVED]]
)
def test_forward_moves_of_an_order_pass(seen: list[int]) -> None:
    assert order_read_violations("o", seen) == []


def test_stock_catches_an_oversell_and_a_level_that_does_not_add_up() -> None:
    initial = {"a": 3, "b": 2}
    fine = [approved(reserved_net={"a": 2}), pending(reserved_net={"a": 1, "b": 1}), rejected()]
    assert stock_violations(initial, fine) == []
    assert stock_violations(initial, fine, {"a": 0, "b": 1}) == []
    # Unknown items are none of this check's business.
    assert stock_violations(initial, [*fine, approved(reserved_net={"c": 99})]) == []

    oversold = stock_violations(initial, [*fine, approved(reserved_net={"a": 1})])
    assert oversold == ["a: 4 units held or sold of 3: oversold"]
    # A unit given back twice (the counter above what is held), or one taken and never accounted for.
    assert stock_violations(initial, fine, {"a": 1, "b": 1}) == ["a: 1 in stock, but 3 - 3 held or sold leaves 0"]
    assert stock_violations(initial, fine, {"a": 0, "b": 0}) == ["b: 0 in stock, but 2 - 1 held or sold leaves 1"]
    assert stock_violations(initial, [], {"a": -1, "b": 2}) == ["a: -1 in stock, but 3 - 0 held or sold leaves 3"]
