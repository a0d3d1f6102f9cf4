"""Retries against real processes (issue 20): the budget survives SIGKILLs, and forward steps ride out a downstream
restart. The system is started by the launcher users run (deploy.local.LocalSystem) on free loopback ports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deploy.local import LocalSystem, SystemOptions
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.coordinator import place_request
from tests.helpers.scrape import scrape, value
from tests.helpers.stubs import StubControlClient, fault_rule

REPO_ROOT = Path(__file__).resolve().parents[2]

# A compensation policy bounded by attempts alone, with waits long enough that the kills land between attempts.
COMPENSATE_ATTEMPTS = 10
BACKOFF_BOUNDS_MS = [min(1_000 * 2**n, 2_000) for n in range(COMPENSATE_ATTEMPTS - 1)]  # 1000 2000 2000 ...
SHARD_TOML = f"""\
default_ttl_ms = 30000
seed = 7
[compensate]
max_attempts = {COMPENSATE_ATTEMPTS}
initial_backoff_ms = 1000
max_backoff_ms = 2000
attempt_timeout_ms = 2000
max_elapsed_ms = 0
"""


@pytest.fixture
def system(tmp_path: Path) -> Iterator[LocalSystem]:
    options = SystemOptions(
        tmp_path / "data",
        shards=1,
        dashboard=False,
        shard_config=SHARD_TOML,
        router_settings={"health_check_interval_s": 0.2},
        stop_timeout_s=10.0,
    )
    with LocalSystem(options, log_dir=tmp_path, cwd=REPO_ROOT) as running:
        yield running


async def _place_until_answered(
    router: str, request: saga_pb2.PlaceOrderRequest, give_up_s: float
) -> tuple[saga_pb2.PlaceOrderResponse, int]:
    """A waiting client that retries the same PlaceOrder through the router until it gets an answer."""
    deadline = time.monotonic() + give_up_s
    unavailable = 0
    while True:
        async with grpc.aio.insecure_channel(router) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            try:
                return await stub.PlaceOrder(request, timeout=max(deadline - time.monotonic(), 0.1)), unavailable
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                unavailable += 1
        await asyncio.sleep(0.2)


async def test_crash_loop_keeps_the_compensation_budget(system: LocalSystem) -> None:
    """A refund that fails forever while the shard is SIGKILLed every second: parked after exactly the policy's
    attempts, within the policy's time plus the downtime, and the waiting client gets the DEAD_LETTERED answer."""
    async with StubControlClient(system.stubs.address) as control:
        await control.set_faults([fault_rule("RefundPayment", error_rate=1.0, error_code="UNAVAILABLE")], seed=1)
    request = place_request("crash-loop-1", items=[("unshippable-crate", 1)])
    client = asyncio.create_task(_place_until_answered(system.router.address, request, give_up_s=120))
    downtime_s = 0.0
    kills = 0
    while not client.done() and kills < 20:
        await asyncio.sleep(1.0)
        if client.done():
            break
        down_at = time.monotonic()
        await asyncio.to_thread(system.kill, "shard-1")
        await asyncio.to_thread(system.restart, "shard-1")  # returns once it answers health checks
        downtime_s += time.monotonic() - down_at
        kills += 1
    answer, unavailable = await asyncio.wait_for(client, 120)
    assert kills >= 2, f"the saga parked before the crash loop got going: {answer}"
    assert answer.status == saga_pb2.FAILED and answer.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
    assert f"after {COMPENSATE_ATTEMPTS} attempts" in answer.error_message

    async with grpc.aio.insecure_channel(system.router.address) as channel:
        saga = await saga_pb2_grpc.SagaCoordinatorStub(channel).GetSaga(
            saga_pb2.GetSagaRequest(order_id="crash-loop-1", include_events=True), timeout=10
        )
        letters = await saga_pb2_grpc.SagaAdminStub(channel).ListDeadLetters(
            saga_pb2.ListDeadLettersRequest(), timeout=10
        )
    refunds = [
        e
        for e in saga.events
        if e.kind == "started" and e.step == saga_pb2.STEP_PROCESS_PAYMENT and e.action == saga_pb2.ACTION_COMPENSATE
    ]
    # Exactly the policy's attempts, however many restarts happened in between (before issue 20: a fresh budget each).
    assert len(refunds) == COMPENSATE_ATTEMPTS, [e.attempt for e in refunds]
    assert [d.attempts for d in letters.dead_letters] == [COMPENSATE_ATTEMPTS]
    parked = next(e for e in saga.events if e.state == saga_pb2.SAGA_STATE_DEAD_LETTERED)
    spent_s = (parked.at.ToMilliseconds() - refunds[0].at.ToMilliseconds()) / 1000
    # Within the policy's waits plus the time the shard was down (and generous slack for a busy machine).
    policy_s = sum(BACKOFF_BOUNDS_MS) / 1000
    assert spent_s <= policy_s + downtime_s + 15, (spent_s, policy_s, downtime_s)
    print(f"kills={kills} downtime={downtime_s:.1f}s parked after {spent_s:.1f}s; client saw {unavailable} UNAVAILABLE")


async def test_a_three_second_stub_restart_fails_no_good_order(system: LocalSystem) -> None:
    """Orders at ~200/s through the router while the stubs are down for 3 s: every order that would succeed does."""
    rate_per_s, duration_s, outage_at_s, outage_s = 200, 8.0, 2.0, 3.0
    total = int(rate_per_s * duration_s)
    results: dict[str, int] = {}
    errors: list[str] = []

    async def one(stub: saga_pb2_grpc.SagaCoordinatorStub, order_id: str) -> None:
        try:
            answer = await stub.PlaceOrder(place_request(order_id), timeout=60)
            results[order_id] = answer.status
            if answer.status != saga_pb2.SUCCESS:
                errors.append(f"{order_id}: {answer.error_message}")
        except grpc.aio.AioRpcError as e:
            errors.append(f"{order_id}: {e.code().name} {e.details()}")

    async def outage() -> None:
        await asyncio.sleep(outage_at_s)
        await asyncio.to_thread(system.kill, "stubs")
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(system.restart, "stubs")

    async with grpc.aio.insecure_channel(system.router.address) as channel:
        stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
        fault = asyncio.create_task(outage())
        started = time.monotonic()
        calls = []
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate_per_s - time.monotonic()))
            calls.append(asyncio.create_task(one(stub, f"outage-{i}")))
        await fault
        await asyncio.wait_for(asyncio.gather(*calls), 90)
    assert not errors, f"{len(errors)} of {total} failed, e.g. {errors[:5]}"
    assert len(results) == total and set(results.values()) == {saga_pb2.SUCCESS}
    # The outage really hit the sagas: forward steps were retried.
    text = await asyncio.to_thread(scrape, system.shards[0].spec.metrics or "")
    retried = value(text, "saga_step_retries_total", action="forward")
    assert retried > 0
    print(f"{total} orders at {rate_per_s}/s, stubs down {outage_s}s: all SUCCESS, {retried:.0f} forward retries")
