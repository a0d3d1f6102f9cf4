"""Dry runs of the operators' actions (coordinator.engine.preview): the plan of a retry from a saga's record alone, and,
on an in-process shard over a real journal with the scripted caller, that a dry run writes nothing and that the real
action then makes exactly the planned calls (the same keys, the same attempt numbers)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from common.definitions.model import Step
from coordinator.config import OperationPolicy, ShardConfig
from coordinator.engine import preview
from coordinator.saga.errors import SagaNotFound, WrongState
from coordinator.saga.model import Action, SagaState, idempotency_key
from coordinator.saga.policies import Policies
from coordinator.saga.record import Event, EventKind, SagaRecord

from .conftest import Harness, order
from .test_engine import _wait_terminal, settle

F, C = Action.FORWARD, Action.COMPENSATE
from tests.helpers import order_flow  # noqa: E402

S = order_flow


class Log:
    """Builds a saga's record the way the journal does: by folding its events."""

    def __init__(self, saga_id: str = "saga-1", order_id: str = "o-1") -> None:
        self.rec = SagaRecord(saga_id, order_id, "u-1", b"", b"", "h", SagaState.RUNNING, 1, 1, 30_001)
        self.at = 1

    def add(
        self,
        kind: EventKind,
        step: Step | None = None,
        action: Action | None = None,
        attempt: int = 0,
        code: str = "",
        state: SagaState | None = None,
    ) -> Log:
        self.at += 1
        event = Event(
            self.rec.saga_id,
            self.rec.next_seq,
            self.at,
            kind,
            state or self.rec.state,
            int(step or 0),
            int(action or 0),
            attempt,
            code,
        )
        self.rec.apply(event)
        return self

    def forward_ok(self, *steps: Step) -> Log:
        for step in steps:
            self.add(EventKind.STARTED, step, F, 1).add(EventKind.SUCCEEDED, step, F, 1, "OK")
        return self

    def state(self, state: SagaState) -> Log:
        return self.add(EventKind.STATE, state=state)

    def compensation_fails(self, step: Step, attempts: range) -> Log:
        for n in attempts:
            self.add(EventKind.STARTED, step, C, n).add(EventKind.RETRYING, step, C, n, "INTERNAL")
        return self.add(EventKind.FAILED, step, C, attempts[-1], "INTERNAL")


def shipment_rejected_refund_parked(attempts: int = 5) -> SagaRecord:
    """Shipping refused the order; the refund failed `attempts` times and the saga was parked."""
    log = Log().forward_ok(S.CREATE_ORDER, S.RESERVE_INVENTORY, S.PROCESS_PAYMENT)
    log.add(EventKind.STARTED, S.SCHEDULE_SHIPMENT, F, 1).add(
        EventKind.FAILED, S.SCHEDULE_SHIPMENT, F, 1, "FAILED_PRECONDITION"
    )
    log.state(SagaState.COMPENSATING).compensation_fails(S.PROCESS_PAYMENT, range(1, attempts + 1))
    return log.state(SagaState.DEAD_LETTERED).rec


def test_a_retry_compensates_what_is_left_last_step_first_with_the_same_keys() -> None:
    saga = shipment_rejected_refund_parked()
    plan = preview.plan_retry(saga, order_flow.FLOW, Policies(ShardConfig()))
    assert (plan.order_id, plan.saga_id) == ("o-1", "saga-1")
    assert (plan.state_now, plan.end_state) == (SagaState.DEAD_LETTERED, SagaState.FAILED)
    assert [(c.step, c.action, c.service, c.method, c.attempt, c.retry_of_earlier_attempt) for c in plan.calls] == [
        (S.PROCESS_PAYMENT, C, "payment", "/shop.v1.PaymentService/RefundPayment", 6, True),
        (S.RESERVE_INVENTORY, C, "inventory", "/shop.v1.InventoryService/ReleaseInventory", 1, False),
        (S.CREATE_ORDER, C, "order", "/shop.v1.OrderService/CancelOrder", 1, False),
    ]
    assert [c.idempotency_key for c in plan.calls] == [
        "saga-1/process_payment/compensate",
        "saga-1/reserve_inventory/compensate",
        "saga-1/create_order/compensate",
    ]
    assert not any(c.asks_first for c in plan.calls)
    # Pure: the record itself is untouched (still parked, no operator event folded in).
    assert saga.state is SagaState.DEAD_LETTERED and saga.steps[S.PROCESS_PAYMENT.number].compensate_base == 0


def test_a_step_whose_forward_outcome_is_unknown_is_asked_about_first_unless_its_policy_says_not_to() -> None:
    log = Log().forward_ok(S.CREATE_ORDER, S.RESERVE_INVENTORY)
    # The charge's outcome is unknown (its deadline passed); the saga parked on the release before trying the refund:
    # a journal shaped by hand, as no run of today's engine makes one, to pin the rule down.
    log.add(EventKind.STARTED, S.PROCESS_PAYMENT, F, 1).add(
        EventKind.FAILED, S.PROCESS_PAYMENT, F, 1, "DEADLINE_EXCEEDED"
    )
    log.state(SagaState.COMPENSATING).compensation_fails(S.RESERVE_INVENTORY, range(1, 3))
    saga = log.state(SagaState.DEAD_LETTERED).rec
    plan = preview.plan_retry(saga, order_flow.FLOW, Policies(ShardConfig()))
    assert [(c.step, c.attempt, c.asks_first) for c in plan.calls] == [
        (S.PROCESS_PAYMENT, 1, True),
        (S.RESERVE_INVENTORY, 3, False),  # compensated before: the forward's outcome is not asked about again
        (S.CREATE_ORDER, 1, False),
    ]
    quiet = ShardConfig(step_operations={"process_payment": OperationPolicy(ask_unknown=False)})
    assert [c.asks_first for c in preview.plan_retry(saga, order_flow.FLOW, Policies(quiet)).calls] == [
        False,
        False,
        False,
    ]


def test_a_declined_charge_is_not_compensated_and_a_second_retry_counts_on() -> None:
    log = Log().forward_ok(S.CREATE_ORDER, S.RESERVE_INVENTORY)
    log.add(EventKind.STARTED, S.PROCESS_PAYMENT, F, 1).add(
        EventKind.FAILED, S.PROCESS_PAYMENT, F, 1, "FAILED_PRECONDITION"
    )
    log.state(SagaState.COMPENSATING).compensation_fails(S.RESERVE_INVENTORY, range(1, 5))
    log.state(SagaState.DEAD_LETTERED)
    # An operator retried; the release failed four more times (a fresh budget), and the saga parked again.
    log.add(EventKind.ADMIN_RETRY, state=SagaState.COMPENSATING).compensation_fails(S.RESERVE_INVENTORY, range(5, 9))
    saga = log.state(SagaState.DEAD_LETTERED).rec
    plan = preview.plan_retry(saga, order_flow.FLOW, Policies(ShardConfig()))
    assert [(c.step, c.attempt, c.retry_of_earlier_attempt) for c in plan.calls] == [
        (S.RESERVE_INVENTORY, 9, True),
        (S.CREATE_ORDER, 1, False),
    ]


def test_resolve_makes_no_call_and_ends_resolved() -> None:
    plan = preview.plan_resolve(shipment_rejected_refund_parked())
    assert (plan.state_now, plan.end_state, plan.calls) == (SagaState.DEAD_LETTERED, SagaState.RESOLVED, ())


def test_only_a_parked_saga_has_a_plan() -> None:
    running = Log().forward_ok(S.CREATE_ORDER).rec
    with pytest.raises(WrongState, match="RUNNING, not DEAD_LETTERED"):
        preview.plan_retry(running, order_flow.FLOW, Policies(ShardConfig()))
    with pytest.raises(WrongState):
        preview.plan_resolve(running)


def test_the_message_carries_every_field() -> None:
    message = preview.preview_message(
        preview.plan_retry(shipment_rejected_refund_parked(), order_flow.FLOW, Policies(ShardConfig())), "shard-7"
    )
    assert (message.order_id, message.saga_id, message.shard_id) == ("o-1", "saga-1", "shard-7")
    assert (message.state_now, message.end_state) == (SagaState.DEAD_LETTERED, SagaState.FAILED)
    first = message.calls[0]
    assert (first.step, first.action, first.service, first.method) == (
        S.PROCESS_PAYMENT,
        C,
        "payment",
        "/shop.v1.PaymentService/RefundPayment",
    )
    assert (first.idempotency_key, first.attempt, first.retry_of_earlier_attempt, first.asks_first) == (
        "saga-1/process_payment/compensate",
        6,
        True,
        False,
    )


def test_the_planned_methods_are_the_definitions() -> None:
    """One source: the plan names the methods the definition's compensations call (the caller calls call.path)."""
    plan = preview.plan_retry(shipment_rejected_refund_parked(), order_flow.FLOW, Policies(ShardConfig()))
    undo = {s.number: s.compensation.path for s in order_flow.FLOW.steps if s.compensation}
    assert [c.method for c in plan.calls] == [undo[c.step] for c in plan.calls]
    assert [c.service for c in plan.calls] == ["payment", "inventory", "order"]


# ---- on a shard: nothing written, then the real action does what was planned -------------------------------------


async def _parked(harness: Harness, *order_ids: str) -> None:
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="unshippable")
    harness.caller.fail_with(S.PROCESS_PAYMENT, C, grpc.StatusCode.INTERNAL, msg="refund service broken")
    assert harness.shard is not None
    for order_id in order_ids:
        placed = await settle(harness, asyncio.create_task(harness.shard.place_order(order(order_id))))
        assert placed.saga.state is SagaState.DEAD_LETTERED  # type: ignore[attr-defined]


async def _until_finished(harness: Harness, *order_ids: str) -> None:
    for order_id in order_ids:
        await settle(harness, asyncio.create_task(_wait_terminal(harness, order_id, frozenset({SagaState.FAILED}))))


async def _started_after_retry(harness: Harness, order_id: str) -> list[tuple[int, Action, int]]:
    """(step, action, attempt) of every attempt started after the last operator retry."""
    assert harness.shard is not None
    _, events = await harness.shard.get(order_id, with_events=True)
    last = max(e.seq for e in events if e.kind is EventKind.ADMIN_RETRY)
    return [(e.step, Action(e.action), e.attempt) for e in events if e.seq > last and e.kind is EventKind.STARTED]


def _planned(plan: preview.SagaPlan) -> list[tuple[int, Action, int]]:
    return [(c.step, c.action, c.attempt) for c in plan.calls]


async def test_a_dry_run_writes_nothing_and_the_retry_then_makes_the_planned_calls(harness: Harness) -> None:
    await _parked(harness, "o-1")
    shard = harness.shard
    assert shard is not None
    _, before = await shard.get("o-1", with_events=True)
    plan = await shard.preview_retry("o-1")
    again = await shard.preview_retry("o-1")  # claims nothing: a second dry run (and the real call) may follow
    assert plan == again
    _, after = await shard.get("o-1", with_events=True)
    assert after == before
    assert [r.order_id for r in await shard.dead_letters(0, False, 10, 0)] == ["o-1"]

    harness.caller.scripts.pop((S.PROCESS_PAYMENT, C))
    calls_before, asked_before = len(harness.caller.calls), len(harness.caller.asked)
    await shard.retry_dead_letter("o-1", "alice", "refund service fixed")
    await _until_finished(harness, "o-1")
    made = harness.caller.calls[calls_before:]
    assert [(c.step, c.action, c.key) for c in made] == [(c.step, c.action, c.idempotency_key) for c in plan.calls]
    assert await _started_after_retry(harness, "o-1") == _planned(plan)
    assert len(harness.caller.asked) == asked_before  # no call was planned to ask first
    assert (await shard.get("o-1"))[0].state is plan.end_state


async def test_a_dry_run_of_all_plans_what_retrying_all_does(harness: Harness) -> None:
    await _parked(harness, "o-1", "o-2", "o-3")
    shard = harness.shard
    assert shard is not None
    plans = await shard.preview_retry_all(0)
    assert [p.order_id for p in plans] == ["o-1", "o-2", "o-3"]
    assert await shard.preview_retry_all(int(S.CREATE_ORDER)) == []  # only dead letters of that step
    harness.caller.scripts.pop((S.PROCESS_PAYMENT, C))
    calls_before = len(harness.caller.calls)
    assert await shard.retry_all_dead_letters(0, "alice", "refunds work again") == [p.order_id for p in plans]
    await _until_finished(harness, "o-1", "o-2", "o-3")
    made = harness.caller.calls[calls_before:]
    for plan in plans:
        mine = [(c.step, c.action, c.key) for c in made if c.order_id == plan.order_id]
        assert mine == [(c.step, c.action, c.idempotency_key) for c in plan.calls]
        assert await _started_after_retry(harness, plan.order_id) == _planned(plan)
    assert len(made) == sum(len(p.calls) for p in plans)


async def test_a_dry_run_refuses_what_the_action_refuses(harness: Harness) -> None:
    shard = harness.shard
    assert shard is not None
    with pytest.raises(SagaNotFound):
        await shard.preview_retry("o-missing")
    with pytest.raises(SagaNotFound):
        await shard.preview_resolve("o-missing")
    await shard.place_order(order("o-ok"))
    with pytest.raises(WrongState, match="SUCCEEDED, not DEAD_LETTERED"):
        await shard.preview_retry("o-ok")
    with pytest.raises(WrongState):
        await shard.preview_resolve("o-ok")
    await _parked(harness, "o-1")
    rec, plan = await shard.preview_resolve("o-1")
    assert rec.state is SagaState.DEAD_LETTERED and plan.end_state is SagaState.RESOLVED
    assert (await shard.get("o-1"))[0].state is SagaState.DEAD_LETTERED
    await shard.retry_dead_letter("o-1", "alice", "try again")  # the saga is now being driven
    with pytest.raises(WrongState):
        await shard.preview_retry("o-1")


async def test_a_second_round_plans_the_next_attempt_numbers(harness: Harness) -> None:
    await _parked(harness, "o-1")
    shard = harness.shard
    assert shard is not None
    plan = await shard.preview_retry("o-1")
    await shard.retry_dead_letter("o-1", "alice", "still broken, let us see")  # the refund still fails: parks again
    await settle(harness, asyncio.create_task(_wait_terminal(harness, "o-1", frozenset({SagaState.DEAD_LETTERED}))))
    assert await _started_after_retry(harness, "o-1") == [
        (S.PROCESS_PAYMENT, C, n) for n in range(plan.calls[0].attempt, plan.calls[0].attempt + 5)
    ]
    second = await shard.preview_retry("o-1")
    assert second.calls[0].attempt == plan.calls[0].attempt + 5
    assert second.calls[0].idempotency_key == idempotency_key(second.saga_id, S.PROCESS_PAYMENT.id, C)
