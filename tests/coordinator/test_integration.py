"""A real shard (gRPC, SQLite journal) against the real stub services, checked through the stubs' ledgers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.config import Limits
from protos.saga.v1 import saga_pb2
from service_stubs.invariants import ledger_violations
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import StubControlClient, fault_rule, running_stubs


@pytest.fixture
async def system(tmp_path: Path):
    async with running_stubs(tmp_path / "stubs", slow_token_delay_s=2.0) as stubs:
        async with running_shard(shard_config(tmp_path, stubs.address)) as shard:
            async with SagaClient(shard.address) as client, StubControlClient(stubs.address) as control:
                yield client, control, shard, stubs


async def test_success(system) -> None:
    client, control, _, _ = system
    resp = await client.place(place_request("ok-1"))
    assert resp.status == saga_pb2.SUCCESS and resp.error_message == "" and resp.saga_id
    assert resp.state == saga_pb2.SAGA_STATE_SUCCEEDED
    ledger = await control.get_ledger("ok-1")
    assert ledger_violations("ok-1", resp.status, ledger, {"sku-1": 2, "sku-2": 1}) == []
    saga = await client.get("ok-1", events=True)
    assert [s.status for s in saga.steps] == [saga_pb2.STEP_STATUS_SUCCEEDED] * 4
    assert saga.events[0].kind == "created" and saga.events[-1].state == saga_pb2.SAGA_STATE_SUCCEEDED


async def test_decline_at_payment_undoes_order_and_inventory(system) -> None:
    client, control, _, _ = system
    resp = await client.place(place_request("dec-1", token="tok_declined"))
    assert resp.status == saga_pb2.FAILED
    assert "process_payment" in resp.error_message and "declined" in resp.error_message
    ledger = await control.get_ledger("dec-1")
    assert ledger_violations("dec-1", resp.status, ledger) == []
    assert ledger.order_created and ledger.order_cancelled
    assert ledger.charged_cents == 0 and not ledger.shipment_scheduled


async def test_sold_out_at_inventory(system) -> None:
    client, control, _, _ = system
    resp = await client.place(place_request("so-1", items=[("sold-out-widget", 1)]))
    assert resp.status == saga_pb2.FAILED and "reserve_inventory" in resp.error_message
    ledger = await control.get_ledger("so-1")
    assert ledger_violations("so-1", resp.status, ledger) == []
    assert ledger.order_cancelled and ledger.charged_cents == 0


async def test_unshippable_refunds_the_charge(system) -> None:
    client, control, _, _ = system
    resp = await client.place(place_request("un-1", items=[("unshippable-piano", 1)], amount_cents=9_900))
    assert resp.status == saga_pb2.FAILED and "schedule_shipment" in resp.error_message
    ledger = await control.get_ledger("un-1")
    assert ledger_violations("un-1", resp.status, ledger) == []
    assert ledger.charged_cents == 9_900 and ledger.refunded_cents == 9_900


async def test_concurrent_duplicates_and_payload_mismatch(system) -> None:
    client, control, _, _ = system
    resps = await asyncio.gather(*(client.place(place_request("dup-1")) for _ in range(50)))
    assert {r.saga_id for r in resps} == {resps[0].saga_id}
    assert all(r.status == saga_pb2.SUCCESS for r in resps)
    ledger = await control.get_ledger("dup-1")
    assert ledger_violations("dup-1", saga_pb2.SUCCESS, ledger) == []
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.place(place_request("dup-1", amount_cents=1))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "order_id", ""), "order_id"),
        (lambda r: setattr(r, "order_id", "x" * 129), "order_id"),
        (lambda r: setattr(r, "user_id", "bad id!"), "user_id"),
        (lambda r: r.ClearField("items"), "items"),
        (lambda r: r.items.add(item_id="sku-9", quantity=0), "items[2].quantity"),
        (lambda r: setattr(r.items[0], "quantity", 10_001), "items[0].quantity"),
        (lambda r: setattr(r.payment_info, "amount_cents", 0), "payment_info.amount_cents"),
        (lambda r: setattr(r.payment_info, "currency", "eur"), "payment_info.currency"),
        (lambda r: setattr(r.payment_info, "payment_token", "4111 1111 1111 1111"), "payment_info.payment_token"),
        (lambda r: r.ClearField("payment_info"), "payment_info"),
        (lambda r: setattr(r, "ttl_ms", 0), "ttl_ms"),
    ],
)
async def test_bad_input_names_the_field_and_writes_nothing(system, mutate, field) -> None:
    client, _, shard, _ = system
    req = place_request("bad-1")
    mutate(req)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.place(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(e.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == field
    assert "4111" not in e.value.details()
    assert await shard.journal.get_by_order(req.order_id) is None


async def test_ttl_with_slow_charge_fails_fast_and_tombstones_the_late_charge(system) -> None:
    client, control, _, _ = system
    started = time.monotonic()
    resp = await client.place(place_request("slow-1", token="tok_slow", ttl_ms=300))
    elapsed = time.monotonic() - started
    assert resp.status == saga_pb2.FAILED
    assert "deadline passed during process_payment" in resp.error_message
    assert elapsed < 1.5, f"took {elapsed:.2f}s"
    await asyncio.sleep(2.2)  # past the moment the slow charge would have landed
    ledger = await control.get_ledger("slow-1")
    assert ledger_violations("slow-1", resp.status, ledger) == []
    charge = [k for k in ledger.keys if k.method == "ChargePayment"]
    assert charge and charge[0].tombstoned and charge[0].applied_count == 0


async def test_dead_letter_survives_restart_then_retry_refunds_once(tmp_path: Path) -> None:
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        await control.set_faults([fault_rule("RefundPayment", error_rate=1.0, error_code="INTERNAL")], seed=1)
        cfg = shard_config(tmp_path, stubs.address)
        async with running_shard(cfg) as shard, SagaClient(shard.address) as client:
            resp = await client.place(place_request("dl-1", items=[("unshippable-x", 1)]))
            assert resp.status == saga_pb2.FAILED and "parked for an operator" in resp.error_message
            assert resp.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
        async with running_shard(cfg) as shard, SagaClient(shard.address) as client:
            listed = await client.admin.ListDeadLetters(saga_pb2.ListDeadLettersRequest())
            assert [d.order_id for d in listed.dead_letters] == ["dl-1"]
            assert listed.dead_letters[0].step == saga_pb2.STEP_PROCESS_PAYMENT
            await control.clear_faults()
            await client.admin.RetryDeadLetter(
                saga_pb2.RetryDeadLetterRequest(order_id="dl-1", reason="refunds fixed"),
                metadata=(("x-operator", "alice"),),
            )
            for _ in range(200):
                saga = await client.get("dl-1", events=True)
                if saga.state == saga_pb2.SAGA_STATE_FAILED:
                    break
                await asyncio.sleep(0.02)
            assert saga.state == saga_pb2.SAGA_STATE_FAILED
            # The audit names the authenticated caller (local-dev: no auth policy on loopback), never a claimed name.
            assert any(e.kind == "admin_retry" and "local-dev" in e.detail for e in saga.events)
            assert not any("alice" in e.detail for e in saga.events)
            again = await client.place(place_request("dl-1", items=[("unshippable-x", 1)]))
            assert again.status == saga_pb2.FAILED and again.state == saga_pb2.SAGA_STATE_FAILED
        ledger = await control.get_ledger("dl-1")
        assert ledger_violations("dl-1", saga_pb2.FAILED, ledger) == []
        refunds = [k for k in ledger.keys if k.method == "RefundPayment" and k.applied_count]
        assert len(refunds) == 1


async def test_resolve_dead_letter_needs_a_reason(tmp_path: Path) -> None:
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        await control.set_faults([fault_rule("CancelOrder", error_rate=1.0, error_code="UNAVAILABLE")], seed=1)
        async with (
            running_shard(shard_config(tmp_path, stubs.address)) as shard,
            SagaClient(shard.address) as client,
        ):
            resp = await client.place(place_request("rs-1", items=[("sold-out-a", 1)]))
            assert resp.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await client.admin.ResolveDeadLetter(saga_pb2.ResolveDeadLetterRequest(order_id="rs-1"))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            out = await client.admin.ResolveDeadLetter(
                saga_pb2.ResolveDeadLetterRequest(order_id="rs-1", reason="order cancelled by hand")
            )
            assert out.saga.state == saga_pb2.SAGA_STATE_RESOLVED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await client.admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(order_id="rs-1"))
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_list_and_watch(system) -> None:
    client, _, _, _ = system
    for i in range(7):
        await client.place(place_request(f"ls-{i}", token="tok_declined" if i % 2 else "tok_ok"))
    seen, token = [], ""
    while True:
        page = await client.saga.ListSagas(saga_pb2.ListSagasRequest(page_size=3, page_token=token))
        seen += [s.order_id for s in page.sagas]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"ls-{i}" for i in reversed(range(7))]
    failed = await client.saga.ListSagas(saga_pb2.ListSagasRequest(state=saga_pb2.SAGA_STATE_FAILED))
    assert sorted(s.order_id for s in failed.sagas) == ["ls-1", "ls-3", "ls-5"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.saga.ListSagas(saga_pb2.ListSagasRequest(page_token="garbage!"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    await client.place(place_request("w-1", token="tok_slow", no_wait=True))
    updates = [u async for u in client.saga.WatchSaga(saga_pb2.WatchSagaRequest(order_id="w-1"), timeout=10)]
    assert updates[0].saga.state == saga_pb2.SAGA_STATE_RUNNING
    assert updates[-1].saga.state == saga_pb2.SAGA_STATE_SUCCEEDED
    assert [u.event.seq for u in updates[1:]] == sorted(u.event.seq for u in updates[1:])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await client.get("nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_overload_sheds_the_excess_and_finishes_the_rest(tmp_path: Path) -> None:
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        await control.set_faults([fault_rule("CreateOrder", latency_ms=200)], seed=1)
        cfg = shard_config(tmp_path, stubs.address, limits=Limits(max_in_flight=20))
        async with running_shard(cfg) as shard, SagaClient(shard.address) as client:

            async def one(i: int) -> str:
                try:
                    return saga_pb2.PlaceOrderStatus.Name((await client.place(place_request(f"ov-{i}"))).status)
                except grpc.aio.AioRpcError as e:
                    assert dict(e.trailing_metadata() or ()).get("retry-after-ms")
                    return e.code().name

            results = await asyncio.gather(*(one(i) for i in range(100)))
            assert results.count("SUCCESS") >= 20
            assert results.count("RESOURCE_EXHAUSTED") >= 50
            assert set(results) <= {"SUCCESS", "RESOURCE_EXHAUSTED"}
            shed = [f"ov-{i}" for i, r in enumerate(results) if r == "RESOURCE_EXHAUSTED"]
            for order_id in shed[:10]:
                assert await shard.journal.get_by_order(order_id) is None
