"""The Shipping service: schedules shipments (held), and releases them to the carrier or cancels them."""

from __future__ import annotations

import grpc

from protos.shop.v1 import common_pb2, shipping_pb2
from service_stubs.holds import Hold, HoldingService, hold_of
from service_stubs.idempotency import Decision
from service_stubs.keys import Answer, KeyRecord, derived_id
from service_stubs.lro_rules import Lro, LroRules, item_id_rule, item_rules
from service_stubs.validation import require_id, require_items

UNSHIPPABLE_PREFIX = "unshippable-"
"""Test fixture: items whose id starts with this cannot be shipped (FAILED_PRECONDITION)."""


class ShippingService(HoldingService[shipping_pb2.ScheduleShipmentRequest]):
    """A shipment is SCHEDULED (nothing leaves) until ReleaseShipment hands it to the carrier or CancelShipment cancels
    it."""

    name = "shipping"
    grpc_service = "shop.v1.ShippingService"
    forward_method = "ScheduleShipment"
    compensation_method = "CancelShipment"
    forward_request = shipping_pb2.ScheduleShipmentRequest
    forward_response = shipping_pb2.ScheduleShipmentResponse
    final_method = "ReleaseShipment"
    read_method = "GetShipment"
    other_responses = {"ReleaseShipment": shipping_pb2.ReleaseShipmentResponse}
    describe = "the shipment of order {}"
    state_names = {Hold.HELD: "SCHEDULED", Hold.FINAL: "RELEASED", Hold.UNDONE: "CANCELLED"}
    proto_states = {
        Hold.HELD: shipping_pb2.SHIPMENT_STATE_SCHEDULED,
        Hold.FINAL: shipping_pb2.SHIPMENT_STATE_RELEASED,
        Hold.UNDONE: shipping_pb2.SHIPMENT_STATE_CANCELLED,
    }

    async def ScheduleShipment(
        self, request: shipping_pb2.ScheduleShipmentRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.ScheduleShipmentResponse:
        return await self.forward(request, request.order_id, context, shipping_pb2.ScheduleShipmentResponse)

    async def CancelShipment(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        return await self.compensate(request, context)

    async def ReleaseShipment(
        self, request: shipping_pb2.ReleaseShipmentRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.ReleaseShipmentResponse:
        return await self.finalize(request, request.order_id, "", context, shipping_pb2.ReleaseShipmentResponse)

    async def GetShipment(
        self, request: shipping_pb2.GetShipmentRequest, context: grpc.aio.ServicerContext
    ) -> shipping_pb2.GetShipmentResponse:
        return await self.read(request.order_id, "", context, shipping_pb2.GetShipmentResponse)

    def final_reply(self, forward: KeyRecord) -> shipping_pb2.ReleaseShipmentResponse:
        return shipping_pb2.ReleaseShipmentResponse(
            state=shipping_pb2.SHIPMENT_STATE_RELEASED, shipment_id=derived_id("shp", forward.key)
        )

    def read_reply(self, forward: KeyRecord) -> shipping_pb2.GetShipmentResponse:
        scheduled = shipping_pb2.ScheduleShipmentRequest.FromString(forward.details or b"")
        return shipping_pb2.GetShipmentResponse(
            order_id=forward.order_id,
            shipment_id=derived_id("shp", forward.key),
            state=self.proto_state(hold_of(forward)),
            items=scheduled.items,
        )

    def final_rule(self, forward: KeyRecord) -> Lro | None:
        scheduled = shipping_pb2.ScheduleShipmentRequest.FromString(forward.details or b"")
        return item_id_rule("dispatch", (item.item_id for item in scheduled.items))

    def validate(self, request: shipping_pb2.ScheduleShipmentRequest) -> None:
        require_id(request.order_id, "order_id")
        require_id(request.user_id, "user_id")
        require_items(request.items)

    def lro_rules(self, request: shipping_pb2.ScheduleShipmentRequest) -> LroRules:
        return item_rules(request.items, "schedule", "cancel", "dispatch")

    def apply(self, key: str, request: shipping_pb2.ScheduleShipmentRequest) -> Decision:
        for item in request.items:
            if item.item_id.startswith(UNSHIPPABLE_PREFIX):
                message = f"item {item.item_id} cannot be shipped"
                return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message))
        response = shipping_pb2.ScheduleShipmentResponse(shipment_id=derived_id("shp", key))
        return Decision(Answer.success(response), details=request.SerializeToString(deterministic=True))
