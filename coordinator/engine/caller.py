"""Calls to the four downstream services: one long-lived channel per service, the idempotency key in metadata, the
request built from the saga's payload. Every attempt has a deadline; replies become CallResults for the engine.

With TLS, the channels present the shard's certificate. grpcio fixes a channel's certificate when the channel is made,
so when the files change on disk (checked at most once a second, on the next call) new channels are opened and the old
ones closed after CHANNEL_CLOSE_GRACE_S, letting the calls on them finish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from loguru import logger

from common import tracing
from common.metadata import IDEMPOTENCY_KEY
from common.rpc_errors import TOMBSTONED, error_reason
from common.tls import ClientTls, TlsFiles
from coordinator.config import Services
from coordinator.saga.errors import CallResult, OperationAnswer, OperationState
from coordinator.saga.model import Action, Step, idempotency_key
from protos.saga.v1 import saga_pb2
from protos.shop.v1 import (
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
    shipping_pb2,
    shipping_pb2_grpc,
)


@dataclass(frozen=True, slots=True)
class SagaPayload:
    """What the steps need to build their requests (payment details opened from the journal only in memory)."""

    saga_id: str
    order_id: str
    user_id: str
    items: tuple[tuple[str, int], ...]
    payment: saga_pb2.PaymentInfo


class Caller(Protocol):
    async def call(self, payload: SagaPayload, step: Step, action: Action, timeout_s: float) -> CallResult:
        """One attempt of the step's forward call or compensation; an OK result may be "accepted, in progress"."""

    async def get_operation(
        self, payload: SagaPayload, step: Step, action: Action, timeout_s: float
    ) -> OperationAnswer:
        """What the step's service says became of that call (its idempotency key); UNKNOWN if it cannot be asked."""

    async def close(self) -> None: ...


_SERVICES = {
    Step.CREATE_ORDER: "shop.v1.OrderService",
    Step.RESERVE_INVENTORY: "shop.v1.InventoryService",
    Step.PROCESS_PAYMENT: "shop.v1.PaymentService",
    Step.SCHEDULE_SHIPMENT: "shop.v1.ShippingService",
}
METHODS = {
    (Step.CREATE_ORDER, Action.FORWARD): "CreateOrder",
    (Step.CREATE_ORDER, Action.COMPENSATE): "CancelOrder",
    (Step.RESERVE_INVENTORY, Action.FORWARD): "ReserveInventory",
    (Step.RESERVE_INVENTORY, Action.COMPENSATE): "ReleaseInventory",
    (Step.PROCESS_PAYMENT, Action.FORWARD): "ChargePayment",
    (Step.PROCESS_PAYMENT, Action.COMPENSATE): "RefundPayment",
    (Step.SCHEDULE_SHIPMENT, Action.FORWARD): "ScheduleShipment",
    (Step.SCHEDULE_SHIPMENT, Action.COMPENSATE): "CancelShipment",
}


def rpc_attributes(step: Step, method: str) -> dict[str, str]:
    """OpenTelemetry's RPC attributes of a call to step's service (the engine's spans are the calls' spans)."""
    return {"rpc.system": "grpc", "rpc.service": _SERVICES[step], "rpc.method": method}


# Keepalive lets a channel notice a dead peer (half-open TCP) instead of waiting for the attempt deadline every time.
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Any ping unacknowledged this long ends the connection. gRPC's default is 60 s, and a ping already in flight
    # (sent after a call's deadline cancels its stream) holds back the keepalive ping, so a half-open connection
    # under steady calls lived 60 s whatever keepalive_timeout_ms said: every attempt in that minute timed out.
    ("grpc.http2.ping_timeout_ms", 5_000),
    # gRPC's reconnect backoff grows to 120 s, and meanwhile every call fails at once ("failed to connect"): a few
    # seconds of network trouble burnt a compensation's whole retry policy and parked the saga. Two seconds bounds it
    # (the router does the same for its shards).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),  # retries are ours: journaled, keyed and bounded by the saga deadline
)
CHANNEL_CLOSE_GRACE_S = 60.0
"""After a certificate rotation, calls still running on the old channels get this long (a step's attempt timeout is
far shorter)."""


class GrpcCaller:
    def __init__(self, services: Services, tls: ClientTls | None = None) -> None:
        self._services = services
        self._tls = tls or ClientTls(TlsFiles())
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._get_operation: dict[Step, Any] = {}
        self._methods = self._open()

    def _open(self) -> dict[tuple[Step, Action], Any]:
        """One channel per distinct address (the stubs serve all four on one), with the current credentials."""
        self._channels = {}
        services = self._services

        def channel(addr: str) -> grpc.aio.Channel:
            if addr not in self._channels:
                # Untraced channels: the engine's span of each attempt is the call's span, and its context goes in
                # the metadata (tracing.outgoing), without the cost of grpc.aio's interceptor machinery.
                self._channels[addr] = self._tls.channel(addr, _CHANNEL_OPTIONS, traced=False)
            return self._channels[addr]

        order = order_pb2_grpc.OrderServiceStub(channel(services.order))
        inventory = inventory_pb2_grpc.InventoryServiceStub(channel(services.inventory))
        payment = payment_pb2_grpc.PaymentServiceStub(channel(services.payment))
        shipping = shipping_pb2_grpc.ShippingServiceStub(channel(services.shipping))
        self._get_operation = {
            Step.CREATE_ORDER: order.GetOperation,
            Step.RESERVE_INVENTORY: inventory.GetOperation,
            Step.PROCESS_PAYMENT: payment.GetOperation,
            Step.SCHEDULE_SHIPMENT: shipping.GetOperation,
        }
        return {
            (Step.CREATE_ORDER, Action.FORWARD): order.CreateOrder,
            (Step.CREATE_ORDER, Action.COMPENSATE): order.CancelOrder,
            (Step.RESERVE_INVENTORY, Action.FORWARD): inventory.ReserveInventory,
            (Step.RESERVE_INVENTORY, Action.COMPENSATE): inventory.ReleaseInventory,
            (Step.PROCESS_PAYMENT, Action.FORWARD): payment.ChargePayment,
            (Step.PROCESS_PAYMENT, Action.COMPENSATE): payment.RefundPayment,
            (Step.SCHEDULE_SHIPMENT, Action.FORWARD): shipping.ScheduleShipment,
            (Step.SCHEDULE_SHIPMENT, Action.COMPENSATE): shipping.CancelShipment,
        }

    def _reopen_if_rotated(self) -> None:
        if not self._tls.changed():
            return
        old = list(self._channels.values())
        self._methods = self._open()
        logger.info("TLS files changed: new channels to the services; the old ones close in {}s", CHANNEL_CLOSE_GRACE_S)
        for ch in old:
            task = asyncio.create_task(ch.close(CHANNEL_CLOSE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def call(self, payload: SagaPayload, step: Step, action: Action, timeout_s: float) -> CallResult:
        self._reopen_if_rotated()
        method = self._methods[(step, action)]
        request = build_request(payload, step, action)
        metadata = ((IDEMPOTENCY_KEY, idempotency_key(payload.saga_id, step, action)), *tracing.outgoing())
        try:
            reply = await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            final = code is grpc.StatusCode.ABORTED and error_reason(e) == TOMBSTONED
            return CallResult(code, e.details() or "", final=final)
        if reply.HasField("operation") and not reply.operation.done:
            return CallResult(grpc.StatusCode.OK, in_progress=True, poll_after_ms=max(0, reply.operation.poll_after_ms))
        return CallResult(grpc.StatusCode.OK)

    async def get_operation(
        self, payload: SagaPayload, step: Step, action: Action, timeout_s: float
    ) -> OperationAnswer:
        self._reopen_if_rotated()
        request = common_pb2.GetOperationRequest(idempotency_key=idempotency_key(payload.saga_id, step, action))
        try:
            reply = await self._get_operation[step](request, timeout=timeout_s, metadata=tracing.outgoing())
        except grpc.aio.AioRpcError as e:
            # UNIMPLEMENTED from a service without GetOperation: it cannot say, the saga goes on as before.
            return OperationAnswer(OperationState.UNKNOWN, CallResult(e.code(), e.details() or ""))
        return operation_answer(reply)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)


_STATES = {
    common_pb2.OPERATION_STATE_NOT_FOUND: OperationState.NOT_FOUND,
    common_pb2.OPERATION_STATE_IN_PROGRESS: OperationState.IN_PROGRESS,
    common_pb2.OPERATION_STATE_DONE: OperationState.DONE,
}


def operation_answer(reply: common_pb2.GetOperationResponse) -> OperationAnswer:
    """GetOperation's reply as the engine reads it; an unknown state or status code name is UNKNOWN."""
    state = _STATES.get(reply.state, OperationState.UNKNOWN)
    if state is OperationState.DONE:
        code = grpc.StatusCode.__members__.get(reply.code)
        if code is None:
            return OperationAnswer(OperationState.UNKNOWN, CallResult(grpc.StatusCode.UNKNOWN, f"code {reply.code!r}"))
        return OperationAnswer(state, CallResult(code, reply.message))
    return OperationAnswer(state, poll_after_ms=max(0, reply.poll_after_ms))


def build_request(payload: SagaPayload, step: Step, action: Action) -> Any:
    if action is Action.COMPENSATE:
        return common_pb2.CompensationRequest(
            order_id=payload.order_id,
            forward_idempotency_key=idempotency_key(payload.saga_id, step, Action.FORWARD),
            reason="saga compensation",
        )
    if step is Step.CREATE_ORDER:
        return order_pb2.CreateOrderRequest(order_id=payload.order_id, user_id=payload.user_id, items=_items(payload))
    if step is Step.RESERVE_INVENTORY:
        return inventory_pb2.ReserveInventoryRequest(order_id=payload.order_id, items=_items(payload))
    if step is Step.PROCESS_PAYMENT:
        p = payload.payment
        return payment_pb2.ChargePaymentRequest(
            order_id=payload.order_id,
            user_id=payload.user_id,
            payment_token=p.payment_token,
            amount_cents=p.amount_cents,
            currency=p.currency,
        )
    return shipping_pb2.ScheduleShipmentRequest(
        order_id=payload.order_id, user_id=payload.user_id, items=_items(payload)
    )


def _items(payload: SagaPayload) -> list[common_pb2.Item]:
    return [common_pb2.Item(item_id=i, quantity=q) for i, q in payload.items]
