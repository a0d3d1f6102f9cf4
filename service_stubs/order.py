"""The Order service: records orders (the saga's first step) and cancels them."""

from __future__ import annotations

import grpc

from protos.shop.v1 import common_pb2, order_pb2
from service_stubs.faults import FaultInjector
from service_stubs.idempotency import Decision, ShopService
from service_stubs.keys import Answer, KeyRecord
from service_stubs.lro_rules import LroRules, item_rules
from service_stubs.operations import OperationSettings
from service_stubs.stats import CallStats
from service_stubs.store import Loaded, Store
from service_stubs.validation import require_id, require_items


class OrderService(ShopService[order_pb2.CreateOrderRequest]):
    """An order id is created once: a second CreateOrder for an open order under another key is FAILED_PRECONDITION.
    A cancelled order may be created again."""

    name = "order"
    grpc_service = "shop.v1.OrderService"
    forward_method = "CreateOrder"
    compensation_method = "CancelOrder"
    forward_request = order_pb2.CreateOrderRequest
    forward_response = order_pb2.CreateOrderResponse

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

    def restore(self, loaded: Loaded) -> None:
        for record in self.keys:
            if record.method == self.forward_method and record.applied and record.undone_by is None:
                self._open_orders[record.order_id] = record.key

    def validate(self, request: order_pb2.CreateOrderRequest) -> None:
        require_id(request.order_id, "order_id")
        require_id(request.user_id, "user_id")
        require_items(request.items)

    def lro_rules(self, request: order_pb2.CreateOrderRequest) -> LroRules:
        return item_rules(request.items, "create", "cancelorder")

    def apply(self, key: str, request: order_pb2.CreateOrderRequest) -> Decision:
        if request.order_id in self._open_orders:
            message = f"order {request.order_id} already exists"
            return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        self._open_orders[request.order_id] = key
        return Decision(Answer.success(order_pb2.CreateOrderResponse(order_id=request.order_id)))

    def undo(self, record: KeyRecord) -> list[tuple[str, int]]:
        if self._open_orders.get(record.order_id) == record.key:
            del self._open_orders[record.order_id]
        return []
