"""The Shipping service: schedules shipments and cancels them."""

from __future__ import annotations

import grpc

from protos.shop.v1 import common_pb2, shipping_pb2
from service_stubs.idempotency import Decision, ShopService
from service_stubs.keys import Answer, derived_id
from service_stubs.lro_rules import LroRules, item_rules
from service_stubs.validation import require_id, require_items

UNSHIPPABLE_PREFIX = "unshippable-"
"""Test fixture: items whose id starts with this cannot be shipped (FAILED_PRECONDITION)."""


class ShippingService(ShopService[shipping_pb2.ScheduleShipmentRequest]):
    name = "shipping"
    grpc_service = "shop.v1.ShippingService"
    forward_method = "ScheduleShipment"
    compensation_method = "CancelShipment"
    forward_request = shipping_pb2.ScheduleShipmentRequest
    forward_response = shipping_pb2.ScheduleShipmentResponse

    async def ScheduleShipment(
        self, request: shipping_pb2.ScheduleShipmentRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.ScheduleShipmentResponse:
        return await self.forward(request, request.order_id, context, shipping_pb2.ScheduleShipmentResponse)

    async def CancelShipment(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        return await self.compensate(request, context)

    def validate(self, request: shipping_pb2.ScheduleShipmentRequest) -> None:
        require_id(request.order_id, "order_id")
        require_id(request.user_id, "user_id")
        require_items(request.items)

    def lro_rules(self, request: shipping_pb2.ScheduleShipmentRequest) -> LroRules:
        return item_rules(request.items, "schedule", "cancel")

    def apply(self, key: str, request: shipping_pb2.ScheduleShipmentRequest) -> Decision:
        for item in request.items:
            if item.item_id.startswith(UNSHIPPABLE_PREFIX):
                message = f"item {item.item_id} cannot be shipped"
                return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        response = shipping_pb2.ScheduleShipmentResponse(shipment_id=derived_id("shp", key))
        return Decision(Answer.success(response))
