"""The coordinator's calls to real stub services (GrpcCaller): how their answers are read. A forward call refused
because its compensation came first is final (google.rpc.ErrorInfo reason TOMBSTONED, DESIGN contract 3), a plain
ABORTED stays transient; an accepted long-running call is "in progress"; GetOperation answers are read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.definitions.model import Values
from coordinator.config import Services
from coordinator.engine.caller import GrpcCaller
from coordinator.saga.errors import CallClass, OperationState
from coordinator.saga.model import Action, idempotency_key
from protos.saga.v1 import saga_pb2
from tests.helpers.order_flow import CREATE_ORDER, PROCESS_PAYMENT
from tests.helpers.stubs import ShopClient, StubControlClient, fault_rule, running_stubs

SAGA = "5a6a0000000000000000000000000001"


def payload(order_id: str, token: str = "tok_ok") -> Values:
    pay = saga_pb2.PaymentInfo(payment_token=token, amount_cents=1200, currency="EUR")
    order = saga_pb2.PlaceOrderRequest(
        order_id=order_id, user_id="u-1", items=[saga_pb2.Item(item_id="sku-1", quantity=1)], payment_info=pay
    )
    return Values(SAGA + order_id[-1], order_id, order)


@pytest.fixture
async def stubs(tmp_path: Path) -> AsyncIterator[str]:
    async with running_stubs(tmp_path / "stubs") as server:
        yield server.address


@pytest.fixture
async def caller(stubs: str) -> AsyncIterator[GrpcCaller]:
    c = GrpcCaller(Services.all_at(stubs))
    yield c
    await c.close()


async def test_a_tombstoned_forward_call_is_final_and_a_plain_aborted_is_not(stubs: str, caller: GrpcCaller) -> None:
    late = payload("o-late-1")
    forward_key = idempotency_key(late.saga_id, PROCESS_PAYMENT.id, Action.FORWARD)
    async with ShopClient(stubs) as shop:
        await shop.compensate("payment", late.key, key="comp-1", forward_key=forward_key)
    refused = await caller.call(late, PROCESS_PAYMENT, Action.FORWARD, 5.0)
    assert refused.code is grpc.StatusCode.ABORTED and refused.final
    assert refused.cls is CallClass.REJECTED  # not retried: nothing was applied and nothing will be

    async with StubControlClient(stubs) as control:
        await control.set_faults([fault_rule("ChargePayment", error_rate=1.0, error_code="ABORTED")], seed=1)
        aborted = await caller.call(payload("o-abort-2"), PROCESS_PAYMENT, Action.FORWARD, 5.0)
        await control.clear_faults()
    assert aborted.code is grpc.StatusCode.ABORTED and not aborted.final
    assert aborted.cls is CallClass.TRANSIENT


async def test_an_accepted_call_and_what_get_operation_says_of_it(caller: GrpcCaller) -> None:
    p = payload("o-lro-3", token="tok_lro-charge-0s")
    before = await caller.get_operation(p, PROCESS_PAYMENT, Action.FORWARD, 5.0)
    assert before.state is OperationState.NOT_FOUND
    accepted = await caller.call(p, PROCESS_PAYMENT, Action.FORWARD, 5.0)
    assert accepted.ok and accepted.in_progress and accepted.poll_after_ms >= 1
    done = await caller.get_operation(p, PROCESS_PAYMENT, Action.FORWARD, 5.0)
    assert done.state is OperationState.DONE and done.result.ok and done.label == "DONE:OK"
    again = await caller.call(p, PROCESS_PAYMENT, Action.FORWARD, 5.0)
    assert again.ok and not again.in_progress  # the recorded final answer


async def test_a_service_that_cannot_be_asked_is_unknown(tmp_path: Path) -> None:
    c = GrpcCaller(Services.all_at("127.0.0.1:9"))  # nothing listens on the discard port
    try:
        answer = await c.get_operation(payload("o-x-4"), CREATE_ORDER, Action.FORWARD, 2.0)
    finally:
        await c.close()
    assert answer.state is OperationState.UNKNOWN and answer.result.code is grpc.StatusCode.UNAVAILABLE
