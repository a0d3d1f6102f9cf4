"""SagaClient against a real system (plaintext on loopback): every method, the typed errors, and a place_order that
survives a router restart by retrying with the same order id (one saga)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest

from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from sagaclient import (
    NO_RETRY,
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PaymentInfo,
    RetryPolicy,
    SagaClient,
    Unavailable,
    api,
)
from sagaclient.retry import waits

from .conftest import start_system

PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR")


async def _client(system: LocalSystem, **kwargs: object) -> SagaClient:
    return await SagaClient.connect(system.router.address, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


async def test_place_get_list_and_watch(system: LocalSystem) -> None:
    async with await _client(system) as client:
        reply = await client.place_order("c-ok-1", "u-1", [("sku-1", 2)], PAY)
        assert reply.status == saga_pb2.SUCCESS and reply.state == saga_pb2.SAGA_STATE_SUCCEEDED, reply
        # Idempotent by order id: the same order again is the same saga.
        again = await client.place_order("c-ok-1", "u-1", [("sku-1", 2)], PAY)
        assert again.saga_id == reply.saga_id

        saga = await client.get_saga("c-ok-1", include_events=True)
        assert saga.saga_id == reply.saga_id and saga.state == saga_pb2.SAGA_STATE_SUCCEEDED
        assert [i.item_id for i in saga.items] == ["sku-1"] and saga.events

        failed = await client.place_order("c-fail-1", "u-1", [saga_pb2.Item(item_id="unshippable-1", quantity=1)], PAY)
        assert failed.status == saga_pb2.FAILED and "schedule_shipment" in failed.error_message, failed

        pages = [p async for p in client.list_sagas(page_size=1, max_pages=2)]
        assert len(pages) == 2 and all(len(p.sagas) == 1 for p in pages) and pages[0].next_page_token
        listed = [s.order_id async for p in client.list_sagas(page_size=500) for s in p.sagas]
        assert {"c-ok-1", "c-fail-1"} <= set(listed) and len(listed) == len(set(listed))
        only_failed = [s.order_id async for p in client.list_sagas(state=saga_pb2.SAGA_STATE_FAILED) for s in p.sagas]
        assert "c-fail-1" in only_failed and "c-ok-1" not in only_failed

        # A finished saga: its snapshot, then the stream ends.
        updates = [u async for u in client.watch_saga("c-ok-1")]
        assert updates[0].saga.state == saga_pb2.SAGA_STATE_SUCCEEDED and not updates[0].HasField("event")

        # A running one: followed to its end.
        pending = await client.place_order("c-watch-1", "u-1", [("sku-2", 1)], PAY, no_wait=True)
        assert pending.status == saga_pb2.PENDING
        states = [u.saga.state async for u in client.watch_saga("c-watch-1")]
        assert states[-1] == saga_pb2.SAGA_STATE_SUCCEEDED


async def test_errors_are_typed(system: LocalSystem) -> None:
    async with await _client(system) as client:
        await client.place_order("c-err-1", "u-1", [("sku-1", 1)], PAY)
        with pytest.raises(AlreadyExists) as taken:
            await client.place_order("c-err-1", "u-1", [("sku-1", 5)], PAY)
        assert taken.value.code is grpc.StatusCode.ALREADY_EXISTS and not taken.value.retryable

        bad = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="eur")
        with pytest.raises(InvalidRequest) as invalid:
            await client.place_order("c-err-2", "u-1", [("sku-1", 1)], bad)
        assert invalid.value.field == "payment_info.currency", invalid.value.field_violations

        with pytest.raises(NotFound):
            await client.get_saga("c-no-such-order")
        with pytest.raises(NotFound):
            [u async for u in client.watch_saga("c-no-such-order")]


async def test_dead_letters_list_retry_and_resolve(system: LocalSystem) -> None:
    async with await _client(system) as client:
        parked = await client.place_order("dl-c-1", "u-1", [("unshippable-2", 1)], PAY)
        assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, parked
        open_letters = [d async for p in client.list_dead_letters() for d in p.dead_letters]
        assert [d.order_id for d in open_letters if d.order_id == "dl-c-1"] == ["dl-c-1"]
        assert next(d for d in open_letters if d.order_id == "dl-c-1").step == saga_pb2.STEP_PROCESS_PAYMENT

        # A dry run: what the retry would do, and nothing done.
        plan = await client.retry_dead_letter("dl-c-1", "refund provider back", dry_run=True)
        assert plan == ["dl-c-1"] and [p.order_id for p in plan.previews] == ["dl-c-1"]
        preview = plan.previews[0]
        assert (preview.state_now, preview.end_state) == (saga_pb2.SAGA_STATE_DEAD_LETTERED, saga_pb2.SAGA_STATE_FAILED)
        assert [(c.method, c.idempotency_key) for c in preview.calls] == [
            ("/shop.v1.PaymentService/RefundPayment", f"{parked.saga_id}/process_payment/compensate"),
            ("/shop.v1.InventoryService/ReleaseInventory", f"{parked.saga_id}/reserve_inventory/compensate"),
            ("/shop.v1.OrderService/CancelOrder", f"{parked.saga_id}/create_order/compensate"),
        ]
        assert preview.calls[0].retry_of_earlier_attempt and not preview.calls[1].retry_of_earlier_attempt
        everything = await client.retry_all_dead_letters("", dry_run=True)
        assert "dl-c-1" in everything and len(everything.previews) == len(everything)
        seen = await client.resolve_dead_letter("dl-c-1", "just looking", dry_run=True)
        assert seen.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
        assert (await client.get_saga("dl-c-1")).state == saga_pb2.SAGA_STATE_DEAD_LETTERED
        await client.place_order("c-dry-ok", "u-1", [("sku-1", 1)], PAY)
        with pytest.raises(FailedPrecondition):
            await client.retry_dead_letter("c-dry-ok", "", dry_run=True)  # not dead-lettered: refused as the real call
        with pytest.raises(NotFound):
            await client.resolve_dead_letter("c-no-such-order", "r", dry_run=True)
        with pytest.raises(InvalidRequest) as invalid:
            await client.retry_dead_letter("not an id!", "", dry_run=True)
        assert invalid.value.field == "order_id"
        with pytest.raises(InvalidRequest) as invalid:
            await client.resolve_dead_letter("dl-c-1", " ", dry_run=True)  # a reason is required all the same
        assert invalid.value.field == "reason"

        retried = await client.retry_dead_letter("dl-c-1", "refund provider back")
        assert retried == ["dl-c-1"] and retried.previews == []
        # The refund still fails (the fault rule stays): the saga parks again within its compensation budget.
        for _ in range(100):
            if (await client.get_saga("dl-c-1")).state == saga_pb2.SAGA_STATE_DEAD_LETTERED:
                break
            await asyncio.sleep(0.1)
        saga = await client.resolve_dead_letter("dl-c-1", "refunded by hand")
        assert saga.state == saga_pb2.SAGA_STATE_RESOLVED
        closed = [d async for p in client.list_dead_letters(include_closed=True) for d in p.dead_letters]
        assert all(d.closed for d in closed if d.order_id == "dl-c-1")
        assert await client.retry_all_dead_letters("nothing open", step=saga_pb2.STEP_CREATE_ORDER) == []


def test_dry_runs_are_retried_and_real_actions_are_not() -> None:
    assert api.retry_dead_letter("o-1", "r").retry is NO_RETRY
    assert api.retry_all_dead_letters("r").retry is NO_RETRY
    assert api.resolve_dead_letter("o-1", "r").retry is NO_RETRY
    # None: the client's policy. A dry run changes nothing, so repeating one after a lost answer is harmless.
    assert api.retry_dead_letter("o-1", "r", dry_run=True).retry is None
    assert api.retry_all_dead_letters("r", dry_run=True).retry is None
    assert api.resolve_dead_letter("o-1", "r", dry_run=True).retry is None
    assert api.retry_all_dead_letters("r", step=saga_pb2.STEP_PROCESS_PAYMENT, dry_run=True).request.dry_run


async def test_place_order_retries_through_a_router_restart_and_makes_one_saga(tmp_path: Path) -> None:
    system = start_system(tmp_path)
    try:
        policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.5, max_attempts=100)
        async with await _client(system, retry=policy, timeout_s=60.0) as client:
            await asyncio.to_thread(system.kill, "router")
            placing = asyncio.create_task(client.place_order("c-restart-1", "u-1", [("sku-1", 1)], PAY))
            await asyncio.sleep(0.5)
            assert not placing.done()  # retrying against the stopped router
            await asyncio.to_thread(system.restart, "router")
            reply = await placing
            assert reply.status == saga_pb2.SUCCESS, reply
            listed = [s async for p in client.list_sagas(page_size=500) for s in p.sagas]
            assert [s.saga_id for s in listed if s.order_id == "c-restart-1"] == [reply.saga_id]

            # Without retries the same outage is an Unavailable at once.
            await asyncio.to_thread(system.kill, "router")
            with pytest.raises(Unavailable):
                await client.get_saga("c-restart-1", retry=NO_RETRY)
            # With retries, the last error once the timeout is spent.
            with pytest.raises(Unavailable):
                await client.get_saga("c-restart-1", timeout_s=1)
    finally:
        system.stop()


def test_waits_grow_exponentially_and_honour_retry_after_ms() -> None:
    gen = waits(RetryPolicy(initial_backoff_s=0.1, multiplier=2, max_backoff_s=0.4, jitter=0), random.Random(1))
    gen.send(None)
    plain = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    assert [gen.send(plain) for _ in range(4)] == [0.1, 0.2, 0.4, 0.4]
    hinted = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(("retry-after-ms", "1500"))
    )
    assert gen.send(hinted) == 1.5
