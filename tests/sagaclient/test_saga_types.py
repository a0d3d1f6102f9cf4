"""SagaClient and sagas of any type, through the router of a real system with a second definition (order_loyalty)
committed: start_saga (the input packed into Any, idempotent per type and key), get_saga and watch_saga by type and
key, a saga parked past its pivot listed, planned and retried by type and key, and list_definitions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import grpc
import pytest

from common.definitions.model import Definition
from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from sagaclient import AlreadyExists, InvalidRequest, NotFound, PaymentInfo, SagaClient, SyncSagaClient, api
from tests.helpers.loyalty import LOYALTY_TYPE, commit_loyalty

from .conftest import DEAD_LETTER_RULE

PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR")
AWARD_REFUSED = control_pb2.FaultRule(
    method="AwardPoints", order_id_prefix="dlf-", error_rate=1.0, error_code="FAILED_PRECONDITION"
)
"""Points for orders starting "dlf-" are refused for good: past the pivot, such a saga parks forward."""


def order(key: str, sku: str = "sku-1") -> saga_pb2.PlaceOrderRequest:
    return saga_pb2.PlaceOrderRequest(
        order_id=key, user_id="u-1", items=[saga_pb2.Item(item_id=sku, quantity=1)], payment_info=PAY
    )


@pytest.fixture(scope="module")
def loyalty(system: LocalSystem) -> Iterator[Definition]:
    definition = commit_loyalty(system)
    with grpc.insecure_channel(system.stubs.address) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        control.SetFaults(control_pb2.SetFaultsRequest(rules=[DEAD_LETTER_RULE, AWARD_REFUSED], seed=1), timeout=10)
    try:
        yield definition
    finally:
        with grpc.insecure_channel(system.stubs.address) as channel:
            control = control_pb2_grpc.StubControlStub(channel)
            control.SetFaults(control_pb2.SetFaultsRequest(rules=[DEAD_LETTER_RULE], seed=1), timeout=10)


async def test_start_get_and_watch_a_saga_of_another_type(system: LocalSystem, loyalty: Definition) -> None:
    async with await SagaClient.connect(system.router.address, rng=random.Random(7)) as router:
        started = await router.start_saga(LOYALTY_TYPE, "lc-1", order("lc-1"))
        assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED, started
        assert (started.saga_type, started.key, started.definition_hash) == (LOYALTY_TYPE, "lc-1", loyalty.hash)
        assert started.definition_version == "1"
        # Idempotent per (type, key), as place_order is per order id: the same start joins the same saga ...
        assert (await router.start_saga(LOYALTY_TYPE, "lc-1", order("lc-1"))).saga_id == started.saga_id
        # ... and another input under that key is refused.
        with pytest.raises(AlreadyExists):
            await router.start_saga(LOYALTY_TYPE, "lc-1", order("lc-1", sku="sku-2"))
        with pytest.raises(NotFound):
            await router.start_saga("no_such_type", "lc-2", order("lc-2"))
        with pytest.raises(InvalidRequest) as invalid:
            await router.start_saga(LOYALTY_TYPE, "lc-2", saga_pb2.GetSagaRequest(order_id="lc-2"))
        assert invalid.value.field == "input", invalid.value.field_violations

        saga = await router.get_saga(saga_type=LOYALTY_TYPE, key="lc-1", include_events=True)
        assert (saga.saga_id, saga.saga_type, saga.key, saga.order_id) == (started.saga_id, LOYALTY_TYPE, "lc-1", "")
        assert [(st.step_id, st.kind) for st in saga.steps] == [(s.id, s.kind.value) for s in loyalty.steps]
        assert {e.step_id for e in saga.events} >= {"award_points"}
        with pytest.raises(NotFound):
            await router.get_saga("lc-1")  # the order flow has no order lc-1
        updates = [u async for u in router.watch_saga(saga_type=LOYALTY_TYPE, key="lc-1")]
        assert updates[-1].saga.state == saga_pb2.SAGA_STATE_SUCCEEDED

        # A start without waiting, followed to its end.
        pending = await router.start_saga(LOYALTY_TYPE, "lc-3", order("lc-3"), no_wait=True, ttl_ms=30_000)
        assert pending.state == saga_pb2.SAGA_STATE_RUNNING
        states = [u.saga.state async for u in router.watch_saga(saga_type=LOYALTY_TYPE, key="lc-3")]
        assert states[-1] == saga_pb2.SAGA_STATE_SUCCEEDED

        versions = {d.name: d for d in await router.list_definitions()}
        assert versions[LOYALTY_TYPE].hash == loyalty.hash and versions[LOYALTY_TYPE].active
        assert list(versions[LOYALTY_TYPE].step_ids) == [s.id for s in loyalty.steps]
        assert versions[LOYALTY_TYPE].sagas >= 2 and not versions[LOYALTY_TYPE].document_json
        documented = {d.name: d for d in await router.list_definitions(include_documents=True)}
        assert '"saga.v1.PlaceOrderRequest"' in documented[LOYALTY_TYPE].document_json


async def test_a_saga_parked_past_its_pivot_is_planned_and_retried_by_type_and_key(
    system: LocalSystem, loyalty: Definition
) -> None:
    async with await SagaClient.connect(system.router.address, rng=random.Random(7)) as router:
        parked = await router.start_saga(LOYALTY_TYPE, "dlf-1", order("dlf-1"))
        assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, parked
        letters = [d async for p in router.list_dead_letters() for d in p.dead_letters if d.key == "dlf-1"]
        assert [(d.saga_type, d.step_id, d.action) for d in letters] == [
            (LOYALTY_TYPE, "award_points", saga_pb2.ACTION_FORWARD)
        ]
        plan = await router.retry_dead_letter(
            "", "points service fixed", saga_type=LOYALTY_TYPE, key="dlf-1", dry_run=True
        )
        (preview,) = plan.previews
        assert (preview.saga_type, preview.key, preview.end_state) == (
            LOYALTY_TYPE,
            "dlf-1",
            saga_pb2.SAGA_STATE_SUCCEEDED,
        )
        assert [(c.step_id, c.action) for c in preview.calls] == [("award_points", saga_pb2.ACTION_FORWARD)]
        seen = await router.resolve_dead_letter("", "just looking", saga_type=LOYALTY_TYPE, key="dlf-1", dry_run=True)
        assert seen.state == saga_pb2.SAGA_STATE_DEAD_LETTERED

        # The points are still refused: the retry parks the saga again, and resolving it closes it.
        await router.retry_dead_letter("", "once more", saga_type=LOYALTY_TYPE, key="dlf-1")
        for _ in range(100):
            saga = await router.get_saga(saga_type=LOYALTY_TYPE, key="dlf-1")
            if saga.state == saga_pb2.SAGA_STATE_DEAD_LETTERED:
                break
            await asyncio.sleep(0.1)
        done = await router.resolve_dead_letter("", "points awarded by hand", saga_type=LOYALTY_TYPE, key="dlf-1")
        assert (done.state, done.saga_type, done.key) == (saga_pb2.SAGA_STATE_RESOLVED, LOYALTY_TYPE, "dlf-1")


def test_the_sync_client_starts_and_reads_by_type_and_key(system: LocalSystem, loyalty: Definition) -> None:
    with SyncSagaClient.connect(system.router.address) as r:
        assert r.start_saga(LOYALTY_TYPE, "lc-sync", order("lc-sync")).state == saga_pb2.SAGA_STATE_SUCCEEDED
        assert r.get_saga(saga_type=LOYALTY_TYPE, key="lc-sync").definition_hash == loyalty.hash


def test_a_saga_is_named_one_way_and_start_packs_its_input() -> None:
    call = api.start_saga(LOYALTY_TYPE, "o-1", order("o-1"), ttl_ms=5_000)
    request = call.request
    assert isinstance(request, saga_pb2.StartSagaRequest)
    assert request.input.type_url == "type.googleapis.com/saga.v1.PlaceOrderRequest" and request.ttl_ms == 5_000
    assert call.retry is None  # the client's policy, as place_order: a start is idempotent per (type, key)
    assert api.get_saga(saga_type=LOYALTY_TYPE, key="o-1").request.key == "o-1"
    assert api.get_saga(key="o-1").request.saga_type == ""  # "order" on the server's side
    for bad in ({}, {"order_id": "o-1", "key": "o-1"}, {"order_id": "o-1", "saga_type": LOYALTY_TYPE}):
        with pytest.raises(ValueError):
            api.get_saga(**bad)  # type: ignore[arg-type]
