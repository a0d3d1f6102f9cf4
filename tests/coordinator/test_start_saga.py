"""StartSaga on a real shard (gRPC, SQLite journal) against the real stub services: the order flow by name, a second
saga type installed through ring.v1 InstallDefinitions and run to its end with the Loyalty service, the views that
name steps by id and definitions by hash, and every bad start refused with its field named."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from common.definitions.check import from_document, load, order_flow
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1 import control_pb2
from protos.shop.v1 import inventory_pb2, order_pb2, shipping_pb2
from service_stubs.invariants import state_violations
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import StubControlClient, fault_rule, running_stubs

ROOT = Path(__file__).resolve().parents[2]
LOYALTY = load(ROOT / "docs" / "definitions" / "order_loyalty.yaml")
ISOLATED = load(ROOT / "common" / "definitions" / "shipped" / "order_isolated.yaml")


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[tuple[SagaClient, StubControlClient, str]]:
    async with running_stubs(tmp_path / "stubs") as stubs:
        async with running_shard(shard_config(tmp_path, stubs.address)) as shard:
            async with SagaClient(shard.address) as client, StubControlClient(stubs.address) as control:
                yield client, control, shard.address


def start_request(saga_type: str, key: str, message: Any, **kw: Any) -> saga_pb2.StartSagaRequest:
    packed = any_pb2.Any()
    packed.Pack(message)
    return saga_pb2.StartSagaRequest(saga_type=saga_type, key=key, input=packed, **kw)


async def install(address: str, *defs: Any, history: int = 1) -> ring_pb2.DefinitionsState:
    async with grpc.aio.insecure_channel(address) as channel:
        ring = ring_pb2_grpc.RingServiceStub(channel)
        reply = await ring.InstallDefinitions(
            ring_pb2.InstallDefinitionsRequest(
                history_version=history,
                definitions=[
                    ring_pb2.Definition(
                        hash=d.hash, name=d.name, version=d.version, document_json=json.dumps(d.document)
                    )
                    for d in defs
                ],
                aliases={d.name: d.hash for d in defs},
            ),
            timeout=30,
        )
    return reply.state


def field_of(e: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(e)
    assert status is not None
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest detail")


async def test_the_order_flow_by_name_is_place_order(system: tuple[SagaClient, StubControlClient, str]) -> None:
    client, _, _ = system
    placed = await client.place(place_request("o-1"))
    started = await client.saga.StartSaga(start_request("order", "o-1", place_request("o-1")), timeout=30)
    assert started.saga_id == placed.saga_id and started.state == saga_pb2.SAGA_STATE_SUCCEEDED
    assert started.definition_hash == order_flow().hash and started.definition_version == "1"
    saga = await client.get("o-1", events=True)
    assert (saga.saga_type, saga.key, saga.definition_hash) == ("order", "o-1", order_flow().hash)
    assert [(s.step, s.step_id, s.kind) for s in saga.steps] == [
        (saga_pb2.STEP_CREATE_ORDER, "create_order", "compensable"),
        (saga_pb2.STEP_RESERVE_INVENTORY, "reserve_inventory", "compensable"),
        (saga_pb2.STEP_PROCESS_PAYMENT, "process_payment", "compensable"),
        (saga_pb2.STEP_SCHEDULE_SHIPMENT, "schedule_shipment", "compensable"),
    ]
    assert {e.step_id for e in saga.events if e.step} == {s.id for s in order_flow().steps}


async def test_a_second_type_installed_then_run_end_to_end(system: tuple[SagaClient, StubControlClient, str]) -> None:
    client, control, address = system
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.saga.StartSaga(start_request("order_loyalty", "o-1", place_request("o-1")), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    state = await install(address, LOYALTY)
    assert state.aliases["order_loyalty"] == LOYALTY.hash and state.aliases["order"] == order_flow().hash
    request = place_request("o-1", amount_cents=1_250)
    started = await client.saga.StartSaga(start_request("order_loyalty", "o-1", request), timeout=30)
    assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED and started.definition_hash == LOYALTY.hash
    assert (started.saga_type, started.key) == ("order_loyalty", "o-1")
    ledger = await control.get_ledger("o-1")
    assert [(p.user_id, p.balance) for p in ledger.points] == [("user-1", 1_250)]
    # The order flow of the same order is another saga, and GetSaga finds each by type and key.
    placed = await client.place(place_request("o-1"))
    assert placed.saga_id != started.saga_id
    saga = await client.saga.GetSaga(saga_pb2.GetSagaRequest(saga_type="order_loyalty", key="o-1"), timeout=30)
    assert saga.saga_id == started.saga_id and saga.order_id == ""
    assert [(s.step_id, s.kind, s.step) for s in saga.steps][3:] == [
        ("process_payment", "pivot", 3),
        ("award_points", "retriable", 0),
    ]
    listed = await client.admin.ListDefinitions(saga_pb2.ListDefinitionsRequest(), timeout=30)
    by_name = {d.name: d for d in listed.definitions}
    assert by_name["order_loyalty"].active and by_name["order_loyalty"].sagas == 1
    assert list(by_name["order_loyalty"].step_ids) == [s.id for s in LOYALTY.steps]
    assert by_name["order"].sagas == 1


async def test_bad_starts_name_their_field(system: tuple[SagaClient, StubControlClient, str]) -> None:
    client, _, _ = system
    cases = [
        (saga_pb2.StartSagaRequest(key="o-1"), "saga_type"),
        (saga_pb2.StartSagaRequest(saga_type="Order!", key="o-1"), "saga_type"),
        (start_request("order", "o 1", place_request("o 1")), "key"),
        (saga_pb2.StartSagaRequest(saga_type="order", key="o-1"), "input"),
        (start_request("order", "o-1", control_pb2.OrderLedger()), "input"),
        (start_request("order", "o-2", place_request("o-1")), "key"),
        (start_request("order", "o-1", saga_pb2.PlaceOrderRequest(order_id="o-1", user_id="u")), "items"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.saga.StartSaga(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field_of(e.value) == field, (request, e.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.saga.GetSaga(saga_pb2.GetSagaRequest(saga_type="order", key="nobody"), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_definition_the_shard_cannot_run_is_refused_whole(
    system: tuple[SagaClient, StubControlClient, str],
) -> None:
    _, _, address = system
    document = json.loads(json.dumps(LOYALTY.document))
    document["name"] = "fraud_checked"
    document["steps"][4]["service"] = "fraud"  # no address in the shard's [services]
    broken = from_document(document, "fraud_checked")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await install(address, LOYALTY, broken)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "fraud" in (e.value.details() or "")
    async with grpc.aio.insecure_channel(address) as channel:
        held = await ring_pb2_grpc.RingServiceStub(channel).GetDefinitions(ring_pb2.GetDefinitionsRequest(), timeout=30)
    assert {d.name for d in held.state.definitions} == {"order"}  # all or none: not even order_loyalty


async def states(control: StubControlClient, order_id: str) -> tuple[str, str, str]:
    ledger = await control.get_ledger(order_id)
    assert state_violations(order_id, ledger) == []
    return (
        order_pb2.OrderState.Name(ledger.order_state),
        inventory_pb2.ReservationState.Name(ledger.reservation_state),
        shipping_pb2.ShipmentState.Name(ledger.shipment_state),
    )


async def test_the_isolated_order_flow_locks_until_approved(system: tuple[SagaClient, StubControlClient, str]) -> None:
    """Order flow v2 as the "order" alias: PlaceOrder runs it; a success ends APPROVED/SOLD/RELEASED, a decline
    REJECTED/RELEASED/CANCELLED with nothing charged, and a step after the pivot that keeps failing parks the saga with
    the order still PENDING and its units HELD (never REJECTED: the charge stands) until an operator's retry approves
    it."""
    client, control, address = system
    await install(address, ISOLATED)
    ok = await client.place(place_request("iso-1"))
    assert ok.status == saga_pb2.SUCCESS
    assert (await client.get("iso-1")).definition_version == "2"
    assert await states(control, "iso-1") == (
        "ORDER_STATE_APPROVED",
        "RESERVATION_STATE_SOLD",
        "SHIPMENT_STATE_RELEASED",
    )
    declined = await client.place(place_request("iso-2", token="tok_declined"))
    assert declined.status == saga_pb2.FAILED and "process_payment" in declined.error_message
    assert await states(control, "iso-2") == (
        "ORDER_STATE_REJECTED",
        "RESERVATION_STATE_RELEASED",
        "SHIPMENT_STATE_CANCELLED",
    )
    assert (await control.get_ledger("iso-2")).charged_cents == 0

    await control.set_faults([fault_rule("ApproveOrder", error_rate=1.0, error_code="FAILED_PRECONDITION")], seed=1)
    parked = await client.place(place_request("iso-3"))
    assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
    assert await states(control, "iso-3") == (
        "ORDER_STATE_PENDING",
        "RESERVATION_STATE_HELD",
        "SHIPMENT_STATE_SCHEDULED",
    )
    await control.clear_faults()
    await client.admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(order_id="iso-3", reason="fixed"), timeout=30)
    for _ in range(300):
        saga = await client.get("iso-3")
        if saga.state == saga_pb2.SAGA_STATE_SUCCEEDED:
            break
        await asyncio.sleep(0.1)
    assert saga.state == saga_pb2.SAGA_STATE_SUCCEEDED
    assert await states(control, "iso-3") == (
        "ORDER_STATE_APPROVED",
        "RESERVATION_STATE_SOLD",
        "SHIPMENT_STATE_RELEASED",
    )
