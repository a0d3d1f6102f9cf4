"""saga-defs verify: every step with every outcome through the real engine, invariants on the services' ledger. The
shipped definitions pass; each seeded mistake (tests/definitions/seeded/), which check accepts, fails with a message
that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.definitions.check import from_document, load, order_flow
from common.definitions.model import Definition
from coordinator.saga.model import SagaState
from coordinator.tools.cli import main
from coordinator.tools.services import Outcome
from coordinator.tools.verify import OUTCOMES, expected_state, render, ttl_problems, verify

ROOT = Path(__file__).resolve().parents[3]
SEEDED = ROOT / "tests" / "definitions" / "seeded"
LOYALTY = load(ROOT / "docs" / "definitions" / "order_loyalty.yaml")

# file -> what verify says about it (a substring of one of its violations or policy problems)
MISTAKES = {
    "compensation-names-saga-id.yaml": "create_order: shop.v1.OrderService/CreateOrder applied (key"
    " <saga_id>/create_order/forward) and never undone: its compensation shop.v1.OrderService/CancelOrder named"
    " '<saga_id>', a key never applied, so the service tombstoned it",
    "compensation-calls-forward.yaml": "reserve_inventory: its compensation shop.v1.InventoryService/ReserveInventory"
    " applied an effect instead of undoing one",
    "compensation-reads-missing-output.yaml": "forward_idempotency_key is '$steps.process_payment.output.charge_id'",
    "deadline-classified-rejected.yaml": "ended FAILED, expected SUCCEEDED (create_order failed: DEADLINE_EXCEEDED",
    "retry-window-beyond-ttl.yaml": "process_payment: its forward policy may retry for 123000 ms, longer than the"
    " saga's default TTL (30000 ms)",
}


@pytest.mark.parametrize("flow", [order_flow(), LOYALTY], ids=lambda f: f.name)
async def test_the_shipped_definitions_pass(flow) -> None:  # type: ignore[no-untyped-def]
    report = await verify(flow)
    assert report.ok, render(report)
    assert len(report.cells) == len(flow.steps) * len(OUTCOMES)
    for cell in report.cells:
        assert cell.state is cell.expected, cell


async def test_past_the_pivot_a_failure_dead_letters_and_nothing_is_undone() -> None:
    report = await verify(LOYALTY)
    award = {c.outcome: c.state for c in report.cells if c.step == "award_points"}
    assert award[Outcome.REJECTED] is SagaState.DEAD_LETTERED and award[Outcome.OK] is SagaState.SUCCEEDED
    assert award[Outcome.APPLIED_THEN_LOST] is SagaState.SUCCEEDED


def test_the_expected_end_follows_the_kinds() -> None:
    pay, award = LOYALTY.by_id("process_payment"), LOYALTY.by_id("award_points")
    assert pay is not None and award is not None
    assert expected_state(LOYALTY, pay, Outcome.TIMEOUT) is SagaState.FAILED
    assert expected_state(LOYALTY, award, Outcome.TIMEOUT) is SagaState.DEAD_LETTERED
    assert expected_state(LOYALTY, award, Outcome.APPLIED_THEN_LOST) is SagaState.SUCCEEDED
    assert ttl_problems(order_flow()) == [] and ttl_problems(LOYALTY) == []


def test_every_seeded_mistake_has_a_case() -> None:
    assert sorted(p.name for p in SEEDED.glob("*.yaml")) == sorted(MISTAKES)


@pytest.mark.parametrize("name", sorted(MISTAKES))
async def test_a_seeded_mistake_passes_check_and_fails_verify(name: str) -> None:
    flow = load(SEEDED / name)  # check accepts it: no DefinitionError
    report = await verify(flow)
    assert not report.ok
    said = [*report.problems, *report.violations]
    assert any(MISTAKES[name] in line for line in said), "\n".join(said)
    assert "verify: " in render(report)


def _with_a_plain_first_step() -> Definition:
    """The order flow whose first step calls a method that cannot be long-running (no `operation` in its response)."""
    document = json.loads(json.dumps(order_flow().document))
    document["steps"][0]["call"] = {
        "method": "shop.v1.OrderService/GetOperation",
        "request": {"idempotency_key": "$input.order_id"},
    }
    return from_document(document, "plain-first-step")


async def test_accepted_then_failed_is_not_applicable_to_a_method_that_cannot_be_long_running() -> None:
    report = await verify(_with_a_plain_first_step())
    cell = next(c for c in report.cells if c.step == "create_order" and c.outcome is Outcome.ACCEPTED_THEN_FAILED)
    assert cell.expected is None and cell.state is None and cell.ok
    assert report.ok, render(report)
    assert "n/a" in render(report)


def test_plan_refuses_it_for_such_a_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(json.dumps(_with_a_plain_first_step().document))
    assert main(["plan", str(path), "--fail-at", "create_order=accepted-then-failed"]) == 2
    assert "cannot be long-running" in capsys.readouterr().err
