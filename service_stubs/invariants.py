"""What the stubs' ledger must show for a saga's answer: invariants over what the services actually applied, not over
the calls the coordinator made. Shared by the tests, the chaos suite and the benchmark's ledger check."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1.control_pb2 import OrderLedger
from protos.shop.v1 import inventory_pb2, order_pb2, shipping_pb2


def ledger_violations(
    order_id: str, status: int, ledger: OrderLedger, items: dict[str, int] | None = None
) -> list[str]:
    """SUCCESS => every effect exactly once, nothing compensated; FAILED => net zero everywhere; never a key twice.
    Loyalty points (no saga step awards them yet, so only where some were): never more revoked than awarded, never a
    balance below what the order still holds; none revoked on SUCCESS, all of them on FAILED. Whatever the status, the
    semantic lock's invariants (state_violations)."""
    out = state_violations(order_id, ledger)
    for k in ledger.keys:
        if k.applied_count > 1:
            out.append(f"{order_id}: key {k.idempotency_key} applied {k.applied_count} times")
        if k.in_progress:  # a saga answers only once every call it made has a final outcome
            out.append(f"{order_id}: key {k.idempotency_key} still in progress")
    for p in ledger.points:
        # The order's net points are part of the user's balance (which counts every order), so it is never below them.
        if not 0 <= p.revoked <= p.awarded or p.balance < p.awarded - p.revoked:
            out.append(f"{order_id}: user {p.user_id} awarded {p.awarded} revoked {p.revoked} balance {p.balance}")
    reserved = {i: q for i, q in ledger.reserved_net.items() if q}
    if status == saga_pb2.SUCCESS:
        if not ledger.order_created or ledger.order_cancelled:
            out.append(
                f"{order_id}: SUCCESS but order created={ledger.order_created} cancelled={ledger.order_cancelled}"
            )
        if items is not None and reserved != items:
            out.append(f"{order_id}: SUCCESS but reserved {reserved} != {items}")
        if ledger.charged_cents <= 0 or ledger.refunded_cents:
            out.append(f"{order_id}: SUCCESS but charged {ledger.charged_cents} refunded {ledger.refunded_cents}")
        if not ledger.shipment_scheduled or ledger.shipment_cancelled:
            out.append(f"{order_id}: SUCCESS but shipment scheduled/cancelled wrong")
        for method in ("CreateOrder", "ReserveInventory", "ChargePayment", "ScheduleShipment"):
            applied = sum(k.applied_count for k in ledger.keys if k.method == method)
            if applied != 1:
                out.append(f"{order_id}: SUCCESS but {method} applied {applied} times")
        for p in ledger.points:
            if p.revoked:
                out.append(f"{order_id}: SUCCESS but {p.revoked} points of user {p.user_id} revoked")
        compensations = [k for k in ledger.keys if k.idempotency_key.endswith("/compensate") and k.applied_count]
        if compensations:
            out.append(f"{order_id}: SUCCESS but compensations applied: {[k.idempotency_key for k in compensations]}")
    elif status == saga_pb2.FAILED:
        if ledger.order_created and not ledger.order_cancelled:
            out.append(f"{order_id}: FAILED but the order is still created")
        if reserved:
            out.append(f"{order_id}: FAILED but still reserved {reserved}")
        if ledger.charged_cents != ledger.refunded_cents:
            out.append(f"{order_id}: FAILED but charged {ledger.charged_cents} refunded {ledger.refunded_cents}")
        if ledger.shipment_scheduled and not ledger.shipment_cancelled:
            out.append(f"{order_id}: FAILED but the shipment is still scheduled")
        for p in ledger.points:
            if p.awarded != p.revoked:
                out.append(f"{order_id}: FAILED but user {p.user_id} awarded {p.awarded} revoked {p.revoked}")
    else:
        out.append(f"{order_id}: status {status} is neither SUCCESS nor FAILED")
    return out


def state_violations(order_id: str, ledger: OrderLedger) -> list[str]:
    """The semantic lock, over a ledger of every service (one process hosting them all), whatever its saga's state:
    what each isolation countermeasure promises at any time (reservation_violations, pivot_violations,
    shipment_gate_violations). In short: APPROVED => charged and not refunded, reservation HELD or SOLD, shipment not
    CANCELLED; REJECTED => nothing held (reservation RELEASED or never made), no net charge, shipment CANCELLED or never
    scheduled. A PENDING order (a saga running, or the order flow, which never approves) is held to nothing here."""
    return [
        *reservation_violations(order_id, ledger),
        *pivot_violations(order_id, ledger),
        *shipment_gate_violations(order_id, ledger),
    ]


# The isolation countermeasures (common/definitions/shipped/order_isolated.yaml), one check each. Each takes the
# order's saga state where it knows one: a saga that ended (SUCCEEDED, FAILED) promises more than one still running,
# and one parked or resolved by an operator (DEAD_LETTERED, RESOLVED) promises only what holds at any time.

_NAME = {
    "order": order_pb2.OrderState.Name,
    "reservation": inventory_pb2.ReservationState.Name,
    "shipment": shipping_pb2.ShipmentState.Name,
}

ORDER_MOVES: dict[int, frozenset[int]] = {
    order_pb2.ORDER_STATE_UNSPECIFIED: frozenset(order_pb2.OrderState.values()),
    order_pb2.ORDER_STATE_PENDING: frozenset(
        {order_pb2.ORDER_STATE_PENDING, order_pb2.ORDER_STATE_APPROVED, order_pb2.ORDER_STATE_REJECTED}
    ),
    order_pb2.ORDER_STATE_APPROVED: frozenset({order_pb2.ORDER_STATE_APPROVED}),
    order_pb2.ORDER_STATE_REJECTED: frozenset({order_pb2.ORDER_STATE_REJECTED}),
}
"""What a reader of GetOrder may see next after each state (UNSPECIFIED: NOT_FOUND, not created yet). An order id is
created once here: the Order service lets a REJECTED id be created again, which a reader would see as REJECTED ->
PENDING, and which no saga of the order flow does."""


def order_lock_violations(
    order_id: str, ledger: OrderLedger, saga_state: int = saga_pb2.SAGA_STATE_UNSPECIFIED
) -> list[str]:
    """The semantic lock on orders: the order's state says what its saga's did. Once the saga ended, SUCCEEDED <=>
    APPROVED and FAILED <=> REJECTED (or never created: its CreateOrder never applied); a saga still running may
    leave it PENDING."""
    state = ledger.order_state
    if saga_state == saga_pb2.SAGA_STATE_SUCCEEDED and state != order_pb2.ORDER_STATE_APPROVED:
        return [f"{order_id}: saga SUCCEEDED but order {_NAME['order'](state)}"]
    rejected = (order_pb2.ORDER_STATE_REJECTED, order_pb2.ORDER_STATE_UNSPECIFIED)
    if saga_state == saga_pb2.SAGA_STATE_FAILED and state not in rejected:
        return [f"{order_id}: saga FAILED but order {_NAME['order'](state)}"]
    return []


def order_read_violations(order_id: str, seen: Sequence[int]) -> list[str]:
    """The semantic lock as a reader of GetOrder sees it: `seen` is every state one reader got, in the order it got
    them (UNSPECIFIED for NOT_FOUND). Only PENDING -> APPROVED or REJECTED, never out of a final state."""
    out = []
    for before, after in itertools.pairwise(seen):
        if after not in ORDER_MOVES[before]:
            out.append(f"{order_id}: a reader saw {_NAME['order'](before)} then {_NAME['order'](after)}")
    return out


def reservation_violations(
    order_id: str, ledger: OrderLedger, saga_state: int = saga_pb2.SAGA_STATE_UNSPECIFIED
) -> list[str]:
    """Commutative stock, one order: units are reserved (HELD) while the order may yet fail, SOLD only with it
    approved, RELEASED when rejected; never negative; once the saga ended, none still HELD: SUCCEEDED => SOLD, FAILED =>
    RELEASED or never made. Over all orders together: stock_violations."""
    out = []
    reservation = ledger.reservation_state
    reserved = {i: q for i, q in ledger.reserved_net.items() if q}
    holding = (inventory_pb2.RESERVATION_STATE_HELD, inventory_pb2.RESERVATION_STATE_SOLD)
    nothing = (inventory_pb2.RESERVATION_STATE_UNSPECIFIED, inventory_pb2.RESERVATION_STATE_RELEASED)
    if any(q < 0 for q in reserved.values()):
        out.append(f"{order_id}: reserved {reserved}: more released than reserved")
    if ledger.order_state == order_pb2.ORDER_STATE_APPROVED and reservation not in holding:
        out.append(f"{order_id}: APPROVED but reservation {_NAME['reservation'](reservation)}")
    if ledger.order_state == order_pb2.ORDER_STATE_REJECTED:
        if reservation not in nothing:
            out.append(f"{order_id}: REJECTED but reservation {_NAME['reservation'](reservation)}")
        if reserved:
            out.append(f"{order_id}: REJECTED but still reserved {reserved}")
    if reservation == inventory_pb2.RESERVATION_STATE_SOLD and ledger.order_state != order_pb2.ORDER_STATE_APPROVED:
        out.append(f"{order_id}: reservation SOLD but order {_NAME['order'](ledger.order_state)}")
    if saga_state == saga_pb2.SAGA_STATE_SUCCEEDED and reservation != inventory_pb2.RESERVATION_STATE_SOLD:
        out.append(f"{order_id}: saga SUCCEEDED but reservation {_NAME['reservation'](reservation)}")
    if saga_state == saga_pb2.SAGA_STATE_FAILED and (reservation not in nothing or reserved):
        out.append(f"{order_id}: saga FAILED but reservation {_NAME['reservation'](reservation)}, reserved {reserved}")
    return out


def stock_violations(
    initial_stock: Mapping[str, int], ledgers: Iterable[OrderLedger], levels: Mapping[str, int] | None = None
) -> list[str]:
    """Commutative stock, all orders of the items in `initial_stock` together (every order that touched them, so that
    what they hold is all that left stock): units reserved and not released (HELD or SOLD) never more than there
    were, so no oversell; and where `levels` (units in stock now) are known, each is what is left, never negative."""
    out = []
    taken = dict.fromkeys(initial_stock, 0)
    for ledger in ledgers:
        for item_id, units in ledger.reserved_net.items():
            if item_id in taken:
                taken[item_id] += units
    for item_id, initial in sorted(initial_stock.items()):
        if taken[item_id] > initial:
            out.append(f"{item_id}: {taken[item_id]} units held or sold of {initial}: oversold")
        if levels is not None and item_id in levels:
            level = levels[item_id]
            if level < 0 or level != initial - taken[item_id]:
                out.append(
                    f"{item_id}: {level} in stock, but {initial} - {taken[item_id]} held or sold leaves "
                    f"{initial - taken[item_id]}"
                )
    return out


def pivot_violations(
    order_id: str, ledger: OrderLedger, saga_state: int = saga_pb2.SAGA_STATE_UNSPECIFIED
) -> list[str]:
    """The pivot: every effect after the charge (the order APPROVED, its units SOLD, its shipment RELEASED) stands on
    a charge that was made and never refunded; a REJECTED order keeps no money. Once the saga ended, SUCCEEDED =>
    charged and not refunded, FAILED => charged as much as refunded."""
    out = []
    charged, refunded = ledger.charged_cents, ledger.refunded_cents
    paid = charged > 0 and not refunded
    after_pivot = {
        "APPROVED": ledger.order_state == order_pb2.ORDER_STATE_APPROVED,
        "reservation SOLD": ledger.reservation_state == inventory_pb2.RESERVATION_STATE_SOLD,
        "shipment RELEASED": ledger.shipment_state == shipping_pb2.SHIPMENT_STATE_RELEASED,
        "saga SUCCEEDED": saga_state == saga_pb2.SAGA_STATE_SUCCEEDED,
    }
    for what, happened in after_pivot.items():
        if happened and not paid:
            out.append(f"{order_id}: {what} but charged {charged} refunded {refunded}")
    for what, undone in (
        ("REJECTED", ledger.order_state == order_pb2.ORDER_STATE_REJECTED),
        ("saga FAILED", saga_state == saga_pb2.SAGA_STATE_FAILED),
    ):
        if undone and charged != refunded:
            out.append(f"{order_id}: {what} but charged {charged} refunded {refunded}")
    return out


def shipment_gate_violations(
    order_id: str, ledger: OrderLedger, saga_state: int = saga_pb2.SAGA_STATE_UNSPECIFIED
) -> list[str]:
    """The shipment release gate: the carrier sees a shipment (RELEASED) only of an APPROVED order; an APPROVED
    order's shipment is never CANCELLED, a REJECTED order's is CANCELLED or was never scheduled. Once the saga ended,
    SUCCEEDED => RELEASED, FAILED => CANCELLED or never scheduled."""
    out = []
    shipment, order = ledger.shipment_state, ledger.order_state
    gone = (shipping_pb2.SHIPMENT_STATE_UNSPECIFIED, shipping_pb2.SHIPMENT_STATE_CANCELLED)
    if shipment == shipping_pb2.SHIPMENT_STATE_RELEASED and order != order_pb2.ORDER_STATE_APPROVED:
        out.append(f"{order_id}: shipment RELEASED but order {_NAME['order'](order)}")
    if order == order_pb2.ORDER_STATE_APPROVED and shipment == shipping_pb2.SHIPMENT_STATE_CANCELLED:
        out.append(f"{order_id}: APPROVED but its shipment is cancelled")
    if order == order_pb2.ORDER_STATE_REJECTED and shipment not in gone:
        out.append(f"{order_id}: REJECTED but shipment {_NAME['shipment'](shipment)}")
    if saga_state == saga_pb2.SAGA_STATE_SUCCEEDED and shipment != shipping_pb2.SHIPMENT_STATE_RELEASED:
        out.append(f"{order_id}: saga SUCCEEDED but shipment {_NAME['shipment'](shipment)}")
    if saga_state == saga_pb2.SAGA_STATE_FAILED and shipment not in gone:
        out.append(f"{order_id}: saga FAILED but shipment {_NAME['shipment'](shipment)}")
    return out


def isolation_violations(order_id: str, saga_state: int, ledger: OrderLedger, seen: Sequence[int] = ()) -> list[str]:
    """Every countermeasure's check of one order of the isolated order flow, given its saga's state
    (SAGA_STATE_UNSPECIFIED if no shard holds one) and what a reader of GetOrder saw of it. Stock over all orders:
    stock_violations."""
    return [
        *order_lock_violations(order_id, ledger, saga_state),
        *order_read_violations(order_id, seen),
        *reservation_violations(order_id, ledger, saga_state),
        *pivot_violations(order_id, ledger, saga_state),
        *shipment_gate_violations(order_id, ledger, saga_state),
    ]
