"""The Payment service: charges and refunds. Never logs tokens or amounts."""

from __future__ import annotations

import asyncio

import grpc

from protos.shop.v1 import common_pb2, payment_pb2
from service_stubs.errors import InvalidArgument
from service_stubs.faults import FaultInjector
from service_stubs.idempotency import Call, Decision, ShopService
from service_stubs.keys import Answer, KeyRecord, derived_id
from service_stubs.lro_rules import LroRules, field_rules
from service_stubs.operations import OperationSettings
from service_stubs.stats import CallStats
from service_stubs.store import Loaded, Store
from service_stubs.validation import require_id

TOKEN_DECLINED = "tok_declined"
"""Test token: FAILED_PRECONDITION "payment declined"."""
TOKEN_SLOW = "tok_slow"
"""Test token: waits (2 s by default), then charges unless a refund tombstoned the key meanwhile."""
TOKEN_HANG = "tok_hang"
"""Test token: never answers and applies nothing; the caller's deadline ends the call."""
DECLINED_MESSAGE = "payment declined"


class PaymentService(ShopService[payment_pb2.ChargePaymentRequest]):
    name = "payment"
    grpc_service = "shop.v1.PaymentService"
    forward_method = "ChargePayment"
    compensation_method = "RefundPayment"
    forward_request = payment_pb2.ChargePaymentRequest
    forward_response = payment_pb2.ChargePaymentResponse

    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        faults: FaultInjector,
        stats: CallStats,
        slow_token_delay_s: float,
        operations: OperationSettings | None = None,
    ) -> None:
        self._slow_token_delay_s = slow_token_delay_s
        super().__init__(store, loaded, faults, stats, operations)

    async def ChargePayment(
        self, request: payment_pb2.ChargePaymentRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb2.ChargePaymentResponse:
        return await self.forward(request, request.order_id, context, payment_pb2.ChargePaymentResponse)

    async def RefundPayment(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        return await self.compensate(request, context)

    def validate(self, request: payment_pb2.ChargePaymentRequest) -> None:
        require_id(request.order_id, "order_id")
        require_id(request.user_id, "user_id")
        require_id(request.payment_token, "payment_token")
        if request.payment_token.strip() != request.payment_token or " " in request.payment_token:
            raise InvalidArgument("payment_token", "must not contain spaces")
        if request.amount_cents < 1:
            raise InvalidArgument("amount_cents", "must be at least 1")
        require_id(request.currency, "currency")

    def lro_rules(self, request: payment_pb2.ChargePaymentRequest) -> LroRules:
        return field_rules("payment_token", request.payment_token, "charge", "refund")

    async def before_apply(self, request: payment_pb2.ChargePaymentRequest, call: Call) -> None:
        if request.payment_token == TOKEN_SLOW:
            await asyncio.sleep(self._slow_token_delay_s)
        elif request.payment_token == TOKEN_HANG:
            await self.hang(call)

    def apply(self, key: str, request: payment_pb2.ChargePaymentRequest) -> Decision:
        if request.payment_token == TOKEN_DECLINED:
            return Decision(Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, DECLINED_MESSAGE))
        response = payment_pb2.ChargePaymentResponse(charge_id=derived_id("ch", key))
        return Decision(Answer.success(response), effect={"cents": request.amount_cents})

    def undo(self, record: KeyRecord) -> list[tuple[str, int]]:
        # The refund is the record itself (undone_by); a real provider call would go here.
        return []
