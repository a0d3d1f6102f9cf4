"""Crash tests: a real shard process SIGKILLed at random moments and at named crash points, restarted on the same
journal; the stubs' ledgers must agree with every saga's outcome. A short version runs in `make test`."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from protos.saga.v1 import saga_pb2
from service_stubs.invariants import ledger_violations
from tests.helpers.coordinator import SagaClient, ShardProcess, place_request
from tests.helpers.stubs import StubControlClient, fault_rule, running_stubs

SEED = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
SAGAS = int(os.environ.get("CRASH_SAGAS", "200"))
KILLS = int(os.environ.get("CRASH_KILLS", "5"))


def request_for(i: int) -> tuple[saga_pb2.PlaceOrderRequest, dict[str, int] | None]:
    if i % 4 == 1:
        return place_request(f"c-{i}", token="tok_declined"), None
    if i % 10 == 3:
        return place_request(f"c-{i}", items=[("unshippable-crate", 1)]), None
    return place_request(f"c-{i}", items=[("sku-a", 1), ("sku-b", 3)]), {"sku-a": 1, "sku-b": 3}


async def place_until_answered(client: SagaClient, req: saga_pb2.PlaceOrderRequest, limit_s: float = 90) -> int:
    """A client that retries PlaceOrder (same order_id) through crashes until it gets SUCCESS or FAILED."""
    deadline = time.monotonic() + limit_s
    delay = 0.05
    while True:
        try:
            resp = await client.place(req, timeout_s=20)
            return int(resp.status)
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        assert time.monotonic() < deadline, f"{req.order_id} never answered"
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


async def check_outcomes(client: SagaClient, control: StubControlClient, answers: dict[str, tuple[int, dict | None]]):
    ledgers = await control.get_ledgers(list(answers))
    violations = []
    for order_id, (status, items) in answers.items():
        saga = await client.get(order_id)
        expected_state = saga_pb2.SAGA_STATE_SUCCEEDED if status == saga_pb2.SUCCESS else saga_pb2.SAGA_STATE_FAILED
        if saga.state != expected_state:
            violations.append(f"{order_id}: answered {status} but saga is {saga.state}")
        violations += ledger_violations(order_id, status, ledgers[order_id], items)
    return violations


async def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    print(f"crash test seed={SEED} sagas={SAGAS} kills={KILLS}")
    rng = random.Random(SEED)
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        await control.set_faults(
            [
                fault_rule("ChargePayment", apply_then_fail_rate=0.15, error_code="UNAVAILABLE", latency_ms=60),
                fault_rule("ReserveInventory", error_rate=0.1, error_code="UNAVAILABLE", latency_ms=60),
                fault_rule("RefundPayment", apply_then_fail_rate=0.2, error_code="DEADLINE_EXCEEDED"),
                fault_rule("*", latency_ms=60),
            ],
            seed=SEED,
        )
        shard = ShardProcess(tmp_path, stubs.address)
        await asyncio.to_thread(shard.start)
        answers: dict[str, tuple[int, dict | None]] = {}
        try:
            async with SagaClient(shard.address) as client:

                async def one(i: int) -> None:
                    await asyncio.sleep(i * 6.0 / SAGAS)  # spread arrivals so every kill finds sagas in flight
                    req, items = request_for(i)
                    answers[req.order_id] = (await place_until_answered(client, req), items)

                async def killer() -> int:
                    kills = 0
                    for _ in range(KILLS):
                        await asyncio.sleep(rng.uniform(0.3, 0.9))
                        shard.kill()
                        kills += 1
                        await asyncio.to_thread(shard.start)
                        assert integrity(shard.journal) == "ok"
                    return kills

                results = await asyncio.gather(killer(), *(one(i) for i in range(SAGAS)))
                assert results[0] == KILLS
                assert len(answers) == SAGAS
                violations = await check_outcomes(client, control, answers)
                assert violations == [], f"seed={SEED}: {violations[:10]}"
                outcomes = [s for s, _ in answers.values()]
                assert outcomes.count(saga_pb2.SUCCESS) >= SAGAS // 3
                # The kills really landed mid-flight: restarts found unfinished sagas to resume.
                assert "unfinished sagas" in shard.log(), shard.log()[-2000:]
                unfinished = await client.saga.ListSagas(saga_pb2.ListSagasRequest(state=saga_pb2.SAGA_STATE_RUNNING))
                assert list(unfinished.sagas) == []
        finally:
            assert shard.terminate() == 0, shard.log()[-3000:]
        assert integrity(shard.journal) == "ok"


@pytest.mark.parametrize(
    ("point", "token"),
    [
        ("after_intent_before_rpc:3", "tok_ok"),
        ("after_reply_before_outcome:2", "tok_ok"),
        ("after_reply_before_outcome:3", "tok_declined"),
        ("mid_compensation:1", "tok_declined"),
        ("mid_commit:4", "tok_ok"),
    ],
)
async def test_named_crash_points(tmp_path: Path, point: str, token: str) -> None:
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        shard = ShardProcess(tmp_path, stubs.address)
        await asyncio.to_thread(shard.start, {"SAGA_CRASH_POINT": point})
        try:
            async with SagaClient(shard.address) as client:
                req = place_request("cp-1", token=token)
                first = asyncio.create_task(place_until_answered(client, req))
                exit_code = await asyncio.to_thread(shard.wait_exit, 20)
                assert exit_code == -9, f"expected SIGKILL at {point}, got {exit_code}"
                assert integrity(shard.journal) == "ok"
                await asyncio.to_thread(shard.start)
                status = await first
                expected = saga_pb2.SUCCESS if token == "tok_ok" else saga_pb2.FAILED
                assert status == expected
                items = {"sku-1": 2, "sku-2": 1} if token == "tok_ok" else None
                assert await check_outcomes(client, control, {"cp-1": (status, items)}) == []
        finally:
            shard.terminate()
