"""saga-defs plan: the engine's own calls for one saga under injected failures, in process (virtual time, a temporary
journal, fake services from the descriptors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.definitions.check import load, order_flow
from common.definitions.model import Action
from coordinator.config import Limits
from coordinator.saga.inputs import validate
from coordinator.saga.model import SagaState
from coordinator.tools.messages import MASK, default_input, masked, parse_input
from coordinator.tools.plan import PLAN_KEY, parse_failure, plan, render
from coordinator.tools.sandbox import SandboxError
from coordinator.tools.services import Outcome

ROOT = Path(__file__).resolve().parents[3]
ORDER = order_flow()
LOYALTY = load(ROOT / "docs" / "definitions" / "order_loyalty.yaml")
F, C = Action.FORWARD, Action.COMPENSATE


def _input(flow=ORDER):  # type: ignore[no-untyped-def]
    return default_input(flow.input_type, flow.key_field, PLAN_KEY)


def test_the_default_input_is_one_the_shard_accepts() -> None:
    message = _input()
    validate(message, PLAN_KEY, Limits())
    assert message.order_id == PLAN_KEY and len(message.items) == 1 and message.items[0].quantity == 1
    assert message.payment_info.currency == "XXX" and not message.HasField("ttl_ms")
    shown = masked(message)
    assert shown["payment_info"] == {"payment_token": MASK, "amount_cents": MASK, "currency": MASK}
    assert shown["user_id"] == "x"


async def test_a_rejected_payment_is_undone_in_reverse_with_the_engines_keys() -> None:
    message = _input()
    message.payment_info.payment_token = "tok_secret_42"
    p = await plan(ORDER, message, {"process_payment": Outcome.REJECTED})
    ran = p.ran
    calls = [(c.step_id, c.action) for c in ran.calls if not c.asks]
    assert calls == [
        ("create_order", F),
        ("reserve_inventory", F),
        ("process_payment", F),
        ("reserve_inventory", C),
        ("create_order", C),
    ]
    assert [c.key for c in ran.calls] == [f"{ran.saga_id}/{step}/{action.label}" for step, action in calls]
    assert all(c.attempt == 1 for c in ran.calls)
    charge = ran.calls[2]
    assert charge.method == "shop.v1.PaymentService/ChargePayment"
    assert charge.request["payment_token"] == MASK and charge.request["order_id"] == PLAN_KEY
    assert charge.result.startswith("FAILED_PRECONDITION")
    assert ran.calls[3].request["forward_idempotency_key"] == f"{ran.saga_id}/reserve_inventory/forward"
    assert ran.state is SagaState.FAILED
    assert ran.message == "process_payment failed: FAILED_PRECONDITION: rejected (injected)"
    text = render(p)
    assert "end: FAILED" in text and "tok_secret_42" not in text and f"{ran.saga_id}/create_order/compensate" in text
    data = p.as_dict()
    assert data["end_state"] == "FAILED" and data["failures"] == {"process_payment": "rejected"}
    assert data["input"]["payment_info"]["payment_token"] == MASK and "tok_secret_42" not in str(data)


async def test_a_retriable_step_that_keeps_timing_out_parks_the_saga_without_compensating() -> None:
    ran = (await plan(LOYALTY, _input(LOYALTY), {"award_points": Outcome.TIMEOUT})).ran
    assert ran.state is SagaState.DEAD_LETTERED
    assert not [c for c in ran.calls if c.action is C]
    award = [c for c in ran.calls if c.step_id == "award_points" and not c.asks]
    assert {c.key for c in award} == {f"{ran.saga_id}/award_points/forward"}
    assert [c.attempt for c in award] == list(range(1, len(award) + 1))
    assert len(award) == 10  # its own policy's max_attempts, not the shard's
    assert "award_points" in ran.message and "parked for an operator" in ran.message


async def test_an_unknown_pivot_is_asked_about_then_undone_by_its_own_compensation_first() -> None:
    ran = (await plan(LOYALTY, _input(LOYALTY), {"process_payment": Outcome.UNKNOWN})).ran
    assert ran.state is SagaState.FAILED
    asks = [c for c in ran.calls if c.asks]
    assert asks and asks[0].key == f"{ran.saga_id}/process_payment/forward" and asks[0].result == "UNKNOWN"
    undone = [c.step_id for c in ran.calls if c.action is C and not c.asks]
    assert undone == ["process_payment", "schedule_shipment", "reserve_inventory", "create_order"]
    assert "tombstoned" in next(c.result for c in ran.calls if c.action is C)


async def test_a_hanging_step_times_out_on_virtual_time() -> None:
    ran = (await plan(ORDER, _input(), {"create_order": Outcome.HANG})).ran
    forward = [c for c in ran.calls if c.step_id == "create_order" and c.action is F and not c.asks]
    assert len(forward) > 1 and all(c.result.startswith("DEADLINE_EXCEEDED") for c in forward)
    assert forward[1].at_ms >= 3000  # the first attempt ran its whole 3 s timeout
    assert ran.state is SagaState.FAILED and ran.elapsed_ms >= 3000


async def test_a_lost_reply_is_asked_about_and_the_saga_goes_on() -> None:
    ran = (await plan(ORDER, _input(), {"reserve_inventory": Outcome.APPLIED_THEN_LOST})).ran
    assert ran.state is SagaState.SUCCEEDED
    ask = next(c for c in ran.calls if c.asks)
    assert ask.step_id == "reserve_inventory" and ask.result == "DONE:OK"
    assert len(ran.effects) == 4 and not any(e.undone_by for e in ran.effects)


async def test_then_gives_the_later_attempts_their_own_outcomes() -> None:
    """--fail-at reserve_inventory=timeout --then timeout --then ok: two timeouts, then the reservation goes through
    (the same key each time) and the saga succeeds; the failure alone would have repeated until the budget ran out."""
    then = {"reserve_inventory": (Outcome.TIMEOUT, Outcome.OK)}
    result = await plan(ORDER, _input(), {"reserve_inventory": Outcome.TIMEOUT}, then=then)
    forward = [c for c in result.ran.calls if c.step_id == "reserve_inventory" and c.action is F and not c.asks]
    assert [c.result.split(":")[0] for c in forward] == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "OK (applied)"]
    assert len({c.key for c in forward}) == 1 and [c.attempt for c in forward] == [1, 2, 3]
    assert result.ran.state is SagaState.SUCCEEDED
    assert "reserve_inventory=timeout then timeout then ok" in render(result)
    assert result.as_dict()["then"] == {"reserve_inventory": ["timeout", "ok"]}


def test_failures_and_inputs_are_parsed_or_refused_by_name() -> None:
    assert parse_failure("process_payment=hang") == ("process_payment", Outcome.HANG)
    with pytest.raises(ValueError, match="no outcome 'late'"):
        parse_failure("process_payment=late")
    with pytest.raises(ValueError, match="STEP=OUTCOME"):
        parse_failure("process_payment")
    message = parse_input(ORDER.input_type, '{"order_id": "o-9", "user_id": "u"}')
    assert message.order_id == "o-9"


async def test_an_input_the_shard_refuses_and_an_unknown_step_are_sandbox_errors() -> None:
    bad = parse_input(ORDER.input_type, '{"order_id": "o-9"}')
    with pytest.raises(SandboxError, match="user_id"):
        await plan(ORDER, bad, {})
    with pytest.raises(SandboxError, match="no step charge"):
        await plan(ORDER, _input(), {"charge": Outcome.REJECTED})


async def test_the_same_plan_twice_is_the_same_plan() -> None:
    first = await plan(LOYALTY, _input(LOYALTY), {"award_points": Outcome.HANG})
    again = await plan(LOYALTY, _input(LOYALTY), {"award_points": Outcome.HANG})
    assert first.as_dict() == again.as_dict()
