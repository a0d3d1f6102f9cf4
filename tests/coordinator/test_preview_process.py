"""A dry run is what the real action then does, against real processes (stubs, three shards, the router, started by
deploy.local.LocalSystem): sagas dead-letter because their refunds fail (a stub fault rule), the dry run is taken
through the router, the fault is cleared, the real retry is made, and the calls the stubs received (their call counts
and the idempotency keys in their ledgers) are exactly the planned ones, for one order and for all:true over orders on
several shards. The dry runs change nothing: the sagas' event logs and the dead-letter queue are as before."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import pytest

from deploy.local import LocalSystem, SystemOptions
from protos.saga.v1 import saga_pb2
from sagaclient import NO_RETRY, PaymentInfo, SagaClient
from tests.helpers.stubs import StubControlClient, fault_rule

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARD_TOML = """\
default_ttl_ms = 30000
[compensate]
max_attempts = 3
initial_backoff_ms = 5
max_backoff_ms = 20
attempt_timeout_ms = 3000
max_elapsed_ms = 0
"""
PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1500, currency="EUR")
COMPENSATIONS = {"CancelOrder", "ReleaseInventory", "RefundPayment", "CancelShipment"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterable[LocalSystem]:
    tmp = tmp_path_factory.mktemp("preview")
    options = SystemOptions(tmp / "data", shards=3, dashboard=False, shard_config=SHARD_TOML, stop_timeout_s=10.0)
    with LocalSystem(options, log_dir=tmp, cwd=REPO_ROOT) as running:
        yield running


@pytest.fixture
async def client(system: LocalSystem) -> AsyncIterator[SagaClient]:
    async with await SagaClient.connect(system.router.address, timeout_s=60, retry=NO_RETRY) as c:
        yield c


async def _park(system: LocalSystem, client: SagaClient, order_ids: Sequence[str]) -> dict[str, str]:
    """Places the orders so that each one dead-letters (shipping refuses the item, every refund fails); returns the
    shard of each."""
    async with StubControlClient(system.stubs.address) as control:
        await control.set_faults([fault_rule("RefundPayment", error_rate=1.0, error_code="UNAVAILABLE")], seed=1)
        try:
            replies = await asyncio.gather(
                *(client.place_order(o, "u-1", [("unshippable-crate", 1)], PAY) for o in order_ids)
            )
        finally:
            await control.clear_faults()
    assert all(r.state == saga_pb2.SAGA_STATE_DEAD_LETTERED for r in replies), replies
    return {o: (await client.get_saga(o)).shard_id for o in order_ids}


async def _snapshot(client: SagaClient, order_ids: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """What a dry run must not change: each saga's event log and the open dead letters."""
    logs = {o: [str(e) for e in (await client.get_saga(o, include_events=True)).events] for o in order_ids}
    letters = [d.order_id async for page in client.list_dead_letters(page_size=500) for d in page.dead_letters]
    return logs, sorted(letters)


async def _until_failed(client: SagaClient, order_ids: Iterable[str], limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    for order_id in order_ids:
        while (await client.get_saga(order_id)).state != saga_pb2.SAGA_STATE_FAILED:
            assert time.monotonic() < deadline, f"{order_id} did not finish compensating"
            await asyncio.sleep(0.05)


def _method(path: str) -> str:
    return path.rpartition("/")[2]


async def _stats(system: LocalSystem) -> Counter[tuple[str, str]]:
    async with StubControlClient(system.stubs.address) as control:
        return Counter(await control.get_stats())


async def _compensation_keys(system: LocalSystem, order_ids: Iterable[str]) -> dict[str, set[tuple[str, str, str]]]:
    """Per order, (service, method, key) of every compensation key the stubs recorded, and with which answer."""
    async with StubControlClient(system.stubs.address) as control:
        ledgers = await control.get_ledgers(order_ids)
    return {
        o: {
            (k.service, k.method, k.idempotency_key)
            for k in ledger.keys
            if k.method in COMPENSATIONS and k.code == "OK"
        }
        for o, ledger in ledgers.items()
    }


def _planned_keys(preview: saga_pb2.SagaPreview) -> set[tuple[str, str, str]]:
    return {(c.service, _method(c.method), c.idempotency_key) for c in preview.calls}


async def _attempts_after_retry(client: SagaClient, order_id: str) -> list[tuple[int, int, int]]:
    """(step, action, attempt) of every call the shard started after the operator's retry."""
    events = (await client.get_saga(order_id, include_events=True)).events
    last = max(e.seq for e in events if e.kind == "admin_retry")
    return [(e.step, e.action, e.attempt) for e in events if e.seq > last and e.kind == "started"]


async def test_the_retry_of_one_order_makes_the_calls_its_dry_run_planned(
    system: LocalSystem, client: SagaClient
) -> None:
    await _park(system, client, ["pv-one"])
    before = await _snapshot(client, ["pv-one"])
    plan = await client.retry_dead_letter("pv-one", "dry run first", dry_run=True)
    assert plan == ["pv-one"] and len(plan.previews) == 1
    preview = plan.previews[0]
    assert (preview.state_now, preview.end_state) == (saga_pb2.SAGA_STATE_DEAD_LETTERED, saga_pb2.SAGA_STATE_FAILED)
    assert [(_method(c.method), c.attempt, c.retry_of_earlier_attempt) for c in preview.calls] == [
        ("RefundPayment", 4, True),  # three attempts failed before the saga was parked
        ("ReleaseInventory", 1, False),
        ("CancelOrder", 1, False),
    ]
    assert await _snapshot(client, ["pv-one"]) == before  # nothing written

    stats_before = await _stats(system)
    assert await client.retry_dead_letter("pv-one", "refunds work again") == ["pv-one"]
    await _until_failed(client, ["pv-one"])
    made = (await _stats(system)) - stats_before
    # The calls the stubs received: each planned one once, answered OK, and nothing else (no GetOperation either).
    assert made == Counter({(_method(c.method), "OK"): 1 for c in preview.calls})
    assert (await _compensation_keys(system, ["pv-one"]))["pv-one"] == _planned_keys(preview)
    assert await _attempts_after_retry(client, "pv-one") == [(c.step, c.action, c.attempt) for c in preview.calls]


async def test_retrying_all_makes_the_calls_the_dry_run_of_all_planned(system: LocalSystem, client: SagaClient) -> None:
    order_ids = [f"pv-all-{i}" for i in range(8)]
    shards = await _park(system, client, order_ids)
    assert len(set(shards.values())) >= 2, shards  # the fan-out must merge more than one shard's plans
    before = await _snapshot(client, order_ids)
    plan = await client.retry_all_dead_letters("dry run first", dry_run=True)
    assert set(order_ids) <= set(plan)
    previews = {p.order_id: p for p in plan.previews}
    assert list(previews) == list(plan)
    assert {o: previews[o].shard_id for o in order_ids} == shards
    assert await _snapshot(client, order_ids) == before

    stats_before = await _stats(system)
    retried = await client.retry_all_dead_letters("refunds work again")
    assert sorted(retried) == sorted(plan)
    await _until_failed(client, retried)
    made = (await _stats(system)) - stats_before
    planned: Counter[tuple[str, str]] = Counter()
    for preview in previews.values():
        planned.update((_method(c.method), "OK") for c in preview.calls)
    assert made == planned
    keys = await _compensation_keys(system, retried)
    for order_id, preview in previews.items():
        assert keys[order_id] == _planned_keys(preview), order_id
        assert await _attempts_after_retry(client, order_id) == [(c.step, c.action, c.attempt) for c in preview.calls]
