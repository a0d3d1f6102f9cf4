"""Per-order ledgers (StubControl.GetLedger): the net effect of every applied key, computed from the key records.

Derived, never stored: the key records are the only truth, so a ledger cannot disagree with what was applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protos.service_stubs.v1 import control_pb2
from service_stubs.holds import HoldingService
from service_stubs.idempotency import ShopService
from service_stubs.inventory import InventoryService
from service_stubs.loyalty import LoyaltyService
from service_stubs.order import OrderService
from service_stubs.shipping import ShippingService

_STATE_FIELDS: dict[str, str] = {
    OrderService.name: "order_state",
    InventoryService.name: "reservation_state",
    ShippingService.name: "shipment_state",
}
"""Which OrderLedger field shows each holding service's state (holds.summary over the order's effects)."""


def order_ledger(order_id: str, services: Sequence[ShopService[Any]]) -> control_pb2.OrderLedger:
    ledger = control_pb2.OrderLedger(order_id=order_id)
    # (applied, undone) per kind of one-off effect: "cancelled" means every applied one was undone.
    creates: list[bool] = []
    shipments: list[bool] = []
    points: dict[str, list[int]] = {}
    """User id -> [awarded, revoked] for this order."""
    for service in services:
        for record in service.keys.for_order(order_id):
            ledger.keys.append(
                control_pb2.KeyRecord(
                    service=service.name,
                    method=record.method,
                    idempotency_key=record.key,
                    applied_count=record.applied_count,
                    tombstoned=record.tombstoned,
                    code=record.code,
                    in_progress=record.in_progress,
                )
            )
            if not record.applied:
                continue
            undone = record.undone_by is not None
            if record.method == "CreateOrder":
                creates.append(undone)
            elif record.method == "ScheduleShipment":
                shipments.append(undone)
            elif record.method == "ReserveInventory" and not undone:
                for item_id, units in record.effect.items():
                    ledger.reserved_net[item_id] += units
            elif record.method == "ChargePayment":
                cents = record.effect.get("cents", 0)
                ledger.charged_cents += cents
                ledger.refunded_cents += cents if undone else 0
            elif record.method == "AwardPoints":
                for user_id, awarded in record.effect.items():
                    totals = points.setdefault(user_id, [0, 0])
                    totals[0] += awarded
                    totals[1] += awarded if undone else 0
    ledger.order_created = bool(creates)
    ledger.order_cancelled = bool(creates) and all(creates)
    ledger.shipment_scheduled = bool(shipments)
    ledger.shipment_cancelled = bool(shipments) and all(shipments)
    for service in services:
        if isinstance(service, HoldingService):
            setattr(ledger, _STATE_FIELDS[service.name], service.order_state(order_id))
    loyalty = next((s for s in services if isinstance(s, LoyaltyService)), None)
    for user_id in sorted(points):
        awarded, revoked = points[user_id]
        balance = loyalty.balance(user_id) if loyalty is not None else 0
        ledger.points.append(
            control_pb2.PointsLedger(user_id=user_id, awarded=awarded, revoked=revoked, balance=balance)
        )
    return ledger
