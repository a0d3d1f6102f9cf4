"""Seeded fault plans (StubControl.SetFaults): reproducible, and honest about what they applied."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.helpers.stubs import ShopClient, StubControlClient, fault_rule
from tests.service_stubs.conftest import rpc_error

SEED = 20_240_601


async def outcomes(shop: ShopClient, control: StubControlClient, seed: int, run: str, calls: int = 100) -> list[str]:
    """Installs a mixed plan with `seed`, makes `calls` sequential charges, returns each call's code and effect."""
    rules = [fault_rule("ChargePayment", error_rate=0.3, apply_then_fail_rate=0.2, error_code="RESOURCE_EXHAUSTED")]
    await control.set_faults(rules, seed=seed)
    codes: list[str] = []
    for index in range(calls):
        try:
            await shop.charge(f"{run}-{index}", key=f"{run}-{index}", amount_cents=1)
            codes.append("OK")
        except grpc.aio.AioRpcError as error:
            codes.append(error.code().name)
    ledgers = await control.get_ledgers(f"{run}-{index}" for index in range(calls))
    return [f"{code}/{ledgers[f'{run}-{index}'].charged_cents}" for index, code in enumerate(codes)]


async def test_same_seed_same_faults_other_seed_other_faults(shop: ShopClient, control: StubControlClient) -> None:
    print(f"seed={SEED}")
    first = await outcomes(shop, control, SEED, "a")
    again = await outcomes(shop, control, SEED, "b")
    other = await outcomes(shop, control, SEED + 1, "c")
    assert first == again
    assert first != other
    # All three kinds happen, and each applies what it says: errors nothing, apply_then_fail the charge.
    assert {"OK/1", "RESOURCE_EXHAUSTED/0", "RESOURCE_EXHAUSTED/1"} == set(first)


async def test_applied_then_reply_failed_then_retry_applies_once(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_faults([fault_rule("ChargePayment", apply_then_fail_rate=1.0, error_code="UNAVAILABLE")], seed=1)
    await rpc_error(shop.charge("o-1", key="k1", amount_cents=800), grpc.StatusCode.UNAVAILABLE)
    ledger = await control.get_ledger("o-1")
    assert ledger.charged_cents == 800  # applied although the reply said otherwise
    await control.clear_faults()
    reply = await shop.charge("o-1", key="k1", amount_cents=800)
    assert reply.charge_id
    ledger = await control.get_ledger("o-1")
    assert ledger.charged_cents == 800
    assert [(k.applied_count, k.code) for k in ledger.keys] == [(1, "OK")]


async def test_error_fault_applies_nothing_and_the_retry_applies(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_faults([fault_rule("ReserveInventory", error_rate=1.0, error_code="ABORTED")], seed=1)
    await rpc_error(shop.reserve("o-1", key="k1"), grpc.StatusCode.ABORTED)
    assert not (await control.get_ledger("o-1")).keys
    await control.clear_faults()
    await shop.reserve("o-1", key="k1")
    assert dict((await control.get_ledger("o-1")).reserved_net) == {"sku-1": 1}


async def test_hang_fault_never_answers(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_faults([fault_rule("/shop.v1.ShippingService/ScheduleShipment", hang_rate=1.0)], seed=1)
    await rpc_error(shop.schedule("o-1", key="k1", timeout_s=0.3), grpc.StatusCode.DEADLINE_EXCEEDED)
    assert not (await control.get_ledger("o-1")).keys
    assert (await control.get_stats())[("ScheduleShipment", "HANG")] == 1


async def test_latency_and_order_prefix(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_faults(
        [
            fault_rule("*", order_id_prefix="chaos-", error_rate=1.0, error_code="UNAVAILABLE"),
            fault_rule("CreateOrder", latency_ms=300),
        ],
        seed=7,
    )
    await rpc_error(shop.charge("chaos-1", key="k1"), grpc.StatusCode.UNAVAILABLE)
    await shop.charge("calm-1", key="k2")
    started = time.monotonic()
    await shop.create_order("calm-2", key="k3")
    assert time.monotonic() - started >= 0.3


async def test_stats_count_calls_per_method_and_code(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-1", key="k1")
    await shop.charge("o-1", key="k1")
    await rpc_error(shop.charge("o-2", key="k2", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    await rpc_error(shop.charge("o-3", key="k3", amount_cents=0), grpc.StatusCode.INVALID_ARGUMENT)
    stats = await control.get_stats()
    assert stats == {
        ("ChargePayment", "OK"): 2,
        ("ChargePayment", "FAILED_PRECONDITION"): 1,
        ("ChargePayment", "INVALID_ARGUMENT"): 1,
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"error_rate": 1.5}, "rules[0].error_rate"),
        ({"error_rate": 0.6, "hang_rate": 0.6}, "rules[0].error_rate"),
        ({"error_code": "NOT_A_CODE"}, "rules[0].error_code"),
        ({"error_code": "OK"}, "rules[0].error_code"),
        ({"latency_ms": -1}, "rules[0].latency_ms"),
    ],
)
async def test_bad_fault_rules_are_invalid_argument(
    control: StubControlClient, fields: dict[str, object], field: str
) -> None:
    error = await rpc_error(control.set_faults([fault_rule("*", **fields)], seed=1), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in (error.details() or "")
