"""The Inventory service: reserves stock for orders, and sells or releases it.

Stock is a counter per item, changed only by adding or subtracting a reservation's units in one synchronous section
(apply, undo): never by writing back a level read before an await. So reserves and releases of concurrent orders
commute, and stock never goes negative (a reservation that does not fit is refused whole)."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from protos.shop.v1 import common_pb2, inventory_pb2
from service_stubs.faults import FaultInjector
from service_stubs.holds import Hold, HoldingService, hold_of
from service_stubs.idempotency import Decision
from service_stubs.keys import Answer, KeyRecord, derived_id
from service_stubs.lro_rules import Lro, LroRules, item_id_rule, item_rules
from service_stubs.operations import OperationSettings
from service_stubs.stats import CallStats
from service_stubs.store import Loaded, Store
from service_stubs.validation import require_id, require_items, units_per_item

SOLD_OUT_PREFIX = "sold-out-"
"""Test fixture: items whose id starts with this start with no stock."""


class InventoryService(HoldingService[inventory_pb2.ReserveInventoryRequest]):
    """Reserving more than is in stock, for any item, is FAILED_PRECONDITION and reserves nothing. A reservation is HELD
    until ConfirmReservation sells it (its units never come back) or ReleaseInventory puts its units back."""

    name = "inventory"
    grpc_service = "shop.v1.InventoryService"
    forward_method = "ReserveInventory"
    compensation_method = "ReleaseInventory"
    forward_request = inventory_pb2.ReserveInventoryRequest
    forward_response = inventory_pb2.ReserveInventoryResponse
    final_method = "ConfirmReservation"
    read_method = "GetReservation"
    other_responses = {"ConfirmReservation": inventory_pb2.ConfirmReservationResponse}
    describe = "the reservation of order {}"
    state_names = {Hold.HELD: "HELD", Hold.FINAL: "SOLD", Hold.UNDONE: "RELEASED"}
    proto_states = {
        Hold.HELD: inventory_pb2.RESERVATION_STATE_HELD,
        Hold.FINAL: inventory_pb2.RESERVATION_STATE_SOLD,
        Hold.UNDONE: inventory_pb2.RESERVATION_STATE_RELEASED,
    }

    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        faults: FaultInjector,
        stats: CallStats,
        default_stock: int,
        initial_stock: Mapping[str, int],
        operations: OperationSettings | None = None,
    ) -> None:
        self._default_stock = default_stock
        self._initial_stock = dict(initial_stock)
        self._stock: dict[str, int] = {}
        """Levels of every item that changed since the data dir was created (the rest are at their initial level)."""
        super().__init__(store, loaded, faults, stats, operations)

    async def ReserveInventory(
        self, request: inventory_pb2.ReserveInventoryRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.ReserveInventoryResponse:
        return await self.forward(request, request.order_id, context, inventory_pb2.ReserveInventoryResponse)

    async def ReleaseInventory(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        return await self.compensate(request, context)

    async def ConfirmReservation(
        self, request: inventory_pb2.ConfirmReservationRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.ConfirmReservationResponse:
        key = request.reservation_idempotency_key
        response = inventory_pb2.ConfirmReservationResponse
        return await self.finalize(request, request.order_id, key, context, response, "reservation_idempotency_key")

    async def GetReservation(
        self, request: inventory_pb2.GetReservationRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.GetReservationResponse:
        key = request.reservation_idempotency_key
        response = inventory_pb2.GetReservationResponse
        return await self.read(request.order_id, key, context, response, "reservation_idempotency_key")

    def final_reply(self, forward: KeyRecord) -> inventory_pb2.ConfirmReservationResponse:
        return inventory_pb2.ConfirmReservationResponse(
            state=inventory_pb2.RESERVATION_STATE_SOLD, reservation_id=derived_id("res", forward.key)
        )

    def read_reply(self, forward: KeyRecord) -> inventory_pb2.GetReservationResponse:
        return inventory_pb2.GetReservationResponse(
            order_id=forward.order_id,
            reservation_id=derived_id("res", forward.key),
            state=self.proto_state(hold_of(forward)),
            items=[common_pb2.Item(item_id=i, quantity=q) for i, q in sorted(forward.effect.items())],
        )

    def final_rule(self, forward: KeyRecord) -> Lro | None:
        return item_id_rule("confirm", sorted(forward.effect))

    def restore(self, loaded: Loaded) -> None:
        self._stock.update(loaded.stock)

    def level(self, item_id: str) -> int:
        """Units of `item_id` in stock now."""
        level = self._stock.get(item_id)
        if level is not None:
            return level
        if item_id in self._initial_stock:
            return self._initial_stock[item_id]
        return 0 if item_id.startswith(SOLD_OUT_PREFIX) else self._default_stock

    def set_levels(self, levels: Mapping[str, int]) -> list[tuple[str, int]]:
        """Sets stock in memory (StubControl.SetStock); returns the levels to commit."""
        self._stock.update(levels)
        return list(levels.items())

    def validate(self, request: inventory_pb2.ReserveInventoryRequest) -> None:
        require_id(request.order_id, "order_id")
        require_items(request.items)

    def lro_rules(self, request: inventory_pb2.ReserveInventoryRequest) -> LroRules:
        return item_rules(request.items, "reserve", "release", "confirm")

    def apply(self, key: str, request: inventory_pb2.ReserveInventoryRequest) -> Decision:
        wanted = units_per_item(request.items)
        # Check every item before taking any: a reservation is all or nothing.
        for item_id, units in wanted.items():
            available = self.level(item_id)
            if units > available:
                message = f"insufficient stock for {item_id}: {available} available, {units} requested"
                return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        changed = self._adjust(wanted, -1)
        response = inventory_pb2.ReserveInventoryResponse(reservation_id=derived_id("res", key))
        return Decision(Answer.success(response), effect=wanted, stock=changed)

    def undo(self, record: KeyRecord) -> list[tuple[str, int]]:
        return self._adjust(record.effect, +1)

    def _adjust(self, units: Mapping[str, int], sign: int) -> list[tuple[str, int]]:
        changed: list[tuple[str, int]] = []
        for item_id, quantity in units.items():
            level = self.level(item_id) + sign * quantity
            assert level >= 0, f"stock of {item_id} would go negative"
            self._stock[item_id] = level
            changed.append((item_id, level))
        return changed
