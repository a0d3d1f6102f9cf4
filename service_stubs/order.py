"""The Order service: records orders (the saga's first step), approves or cancels them, and answers their state."""

from __future__ import annotations

import grpc

from protos.shop.v1 import common_pb2, order_pb2
from service_stubs.faults import FaultInjector
from service_stubs.holds import Hold, HoldingService, hold_of
from service_stubs.idempotency import Decision
from service_stubs.keys import Answer, KeyRecord
from service_stubs.lro_rules import Lro, LroRules, item_id_rule, item_rules
from service_stubs.operations import OperationSettings
from service_stubs.stats import CallStats
from service_stubs.store import Loaded, Store
from service_stubs.validation import require_id, require_items


class OrderService(HoldingService[order_pb2.CreateOrderRequest]):
    """An order id is created once: a second CreateOrder for an open order (PENDING or APPROVED) under another key is
    FAILED_PRECONDITION. A cancelled (REJECTED) order may be created again, as CreateOrder always allowed: that is a
    new order, PENDING, and GetOrder reports it; the rejected one stays REJECTED in its own key record."""

    name = "order"
    grpc_service = "shop.v1.OrderService"
    forward_method = "CreateOrder"
    compensation_method = "CancelOrder"
    forward_request = order_pb2.CreateOrderRequest
    forward_response = order_pb2.CreateOrderResponse
    final_method = "ApproveOrder"
    read_method = "GetOrder"
    other_responses = {"ApproveOrder": order_pb2.ApproveOrderResponse}
    describe = "order {}"
    state_names = {Hold.HELD: "PENDING", Hold.FINAL: "APPROVED", Hold.UNDONE: "REJECTED"}
    proto_states = {
        Hold.HELD: order_pb2.ORDER_STATE_PENDING,
        Hold.FINAL: order_pb2.ORDER_STATE_APPROVED,
        Hold.UNDONE: order_pb2.ORDER_STATE_REJECTED,
    }

    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        faults: FaultInjector,
        stats: CallStats,
        operations: OperationSettings | None = None,
    ) -> None:
        self._open_orders: dict[str, str] = {}
        """Open order id -> key of the CreateOrder that created it."""
        super().__init__(store, loaded, faults, stats, operations)

    async def CreateOrder(
        self, request: order_pb2.CreateOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_pb2.CreateOrderResponse:
        return await self.forward(request, request.order_id, context, order_pb2.CreateOrderResponse)

    async def CancelOrder(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        return await self.compensate(request, context)

    async def ApproveOrder(
        self, request: order_pb2.ApproveOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_pb2.ApproveOrderResponse:
        return await self.finalize(request, request.order_id, "", context, order_pb2.ApproveOrderResponse)

    async def GetOrder(
        self, request: order_pb2.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_pb2.GetOrderResponse:
        return await self.read(request.order_id, "", context, order_pb2.GetOrderResponse)

    def final_reply(self, forward: KeyRecord) -> order_pb2.ApproveOrderResponse:
        return order_pb2.ApproveOrderResponse(state=order_pb2.ORDER_STATE_APPROVED)

    def read_reply(self, forward: KeyRecord) -> order_pb2.GetOrderResponse:
        created = order_pb2.CreateOrderRequest.FromString(forward.details or b"")
        return order_pb2.GetOrderResponse(
            order_id=forward.order_id,
            state=self.proto_state(hold_of(forward)),
            user_id=created.user_id,
            items=created.items,
        )

    def final_rule(self, forward: KeyRecord) -> Lro | None:
        created = order_pb2.CreateOrderRequest.FromString(forward.details or b"")
        return item_id_rule("approve", (item.item_id for item in created.items))

    def restore(self, loaded: Loaded) -> None:
        for record in self.keys:
            if record.method == self.forward_method and record.applied and record.undone_by is None:
                self._open_orders[record.order_id] = record.key

    def validate(self, request: order_pb2.CreateOrderRequest) -> None:
        require_id(request.order_id, "order_id")
        require_id(request.user_id, "user_id")
        require_items(request.items)

    def lro_rules(self, request: order_pb2.CreateOrderRequest) -> LroRules:
        return item_rules(request.items, "create", "cancelorder", "approve")

    def apply(self, key: str, request: order_pb2.CreateOrderRequest) -> Decision:
        if request.order_id in self._open_orders:
            message = f"order {request.order_id} already exists"
            return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        self._open_orders[request.order_id] = key
        response = order_pb2.CreateOrderResponse(order_id=request.order_id)
        return Decision(Answer.success(response), details=request.SerializeToString(deterministic=True))

    def undo(self, record: KeyRecord) -> list[tuple[str, int]]:
        if self._open_orders.get(record.order_id) == record.key:
            del self._open_orders[record.order_id]
        return []
