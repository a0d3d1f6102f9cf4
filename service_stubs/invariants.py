"""What the stubs' ledger must show for a saga's answer: invariants over what the services actually applied, not over
the calls the coordinator made. Shared by the tests, the chaos suite and the benchmark's ledger check."""

from __future__ import annotations

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
    """The semantic lock, over a ledger of every service (one process hosting them all): APPROVED => charged and not
    refunded, reservation HELD or SOLD, shipment not CANCELLED; REJECTED => nothing held (reservation RELEASED or never
    made), no net charge, shipment CANCELLED or never scheduled. A PENDING order (a saga running, or the order flow,
    which never approves) is held to nothing here."""
    out = []
    reservation = ledger.reservation_state
    shipment = ledger.shipment_state
    reserved = {i: q for i, q in ledger.reserved_net.items() if q}
    if ledger.order_state == order_pb2.ORDER_STATE_APPROVED:
        if ledger.charged_cents <= 0 or ledger.refunded_cents:
            out.append(f"{order_id}: APPROVED but charged {ledger.charged_cents} refunded {ledger.refunded_cents}")
        if reservation not in (inventory_pb2.RESERVATION_STATE_HELD, inventory_pb2.RESERVATION_STATE_SOLD):
            out.append(f"{order_id}: APPROVED but reservation {inventory_pb2.ReservationState.Name(reservation)}")
        if shipment == shipping_pb2.SHIPMENT_STATE_CANCELLED:
            out.append(f"{order_id}: APPROVED but its shipment is cancelled")
    elif ledger.order_state == order_pb2.ORDER_STATE_REJECTED:
        if reservation not in (inventory_pb2.RESERVATION_STATE_UNSPECIFIED, inventory_pb2.RESERVATION_STATE_RELEASED):
            out.append(f"{order_id}: REJECTED but reservation {inventory_pb2.ReservationState.Name(reservation)}")
        if reserved:
            out.append(f"{order_id}: REJECTED but still reserved {reserved}")
        if ledger.charged_cents != ledger.refunded_cents:
            out.append(f"{order_id}: REJECTED but charged {ledger.charged_cents} refunded {ledger.refunded_cents}")
        if shipment not in (shipping_pb2.SHIPMENT_STATE_UNSPECIFIED, shipping_pb2.SHIPMENT_STATE_CANCELLED):
            out.append(f"{order_id}: REJECTED but shipment {shipping_pb2.ShipmentState.Name(shipment)}")
    return out
