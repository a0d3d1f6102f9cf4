"""Long-running operations and unknown outcomes, with the fake caller and clock: a saga waits on an accepted call
without re-sending it (also across a restart), is asked about by the poller at its due times, gives up past the
step's limit; an unknown outcome is asked about before a retry or a compensation."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import grpc

from common.definitions.model import Step
from coordinator.config import OperationPolicy
from coordinator.saga.errors import CallResult
from coordinator.saga.model import Action, SagaState, StepStatus, idempotency_key
from coordinator.saga.record import EventKind

from .conftest import Harness, order
from .test_engine import settle

F, C = Action.FORWARD, Action.COMPENSATE
from tests.helpers import order_flow  # noqa: E402

S = order_flow
FAST_POLLS = OperationPolicy(poll_min_ms=100, poll_max_ms=1_000, heartbeat_ms=5_000, forward_max_ms=20_000)


def calls(h: Harness, step: Step, action: Action) -> int:
    return sum(1 for c in h.caller.calls if c.step == step and c.action is action)


async def wait_state(h: Harness, order_id: str, states: tuple[SagaState, ...], limit_s: float = 600) -> None:
    """Advances the fake clock until the saga is in one of `states`."""
    assert h.shard is not None
    waited = 0.0
    while True:
        await h.quiesce()
        rec, _ = await h.shard.get(order_id)
        if rec.state in states:
            return
        await h.clock.advance(0.05)
        waited += 0.05
        assert waited < limit_s, f"saga {order_id} is {rec.state.name}"


def metric(harness: Harness, name: str, **labels: str) -> float:
    assert harness.shard is not None
    value = harness.shard.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


PAY_F = {"step": "process_payment", "action": "forward"}


async def test_an_accepted_charge_is_waited_on_and_never_sent_twice(harness: Harness) -> None:
    await harness.restart(operations=FAST_POLLS)
    harness.caller.long_running(S.PROCESS_PAYMENT, F, 5.0)
    assert harness.shard is not None
    placed = await harness.shard.place_order(order())
    # Answered once the saga waits: PENDING, not after the operation.
    assert placed.saga.state is SagaState.RUNNING
    rec, _ = await harness.shard.get("o-1")
    progress = rec.steps[S.PROCESS_PAYMENT.number]
    assert progress.waiting == F and progress.status is StepStatus.IN_FLIGHT
    assert harness.shard.waiting == 1
    assert metric(harness, "saga_operations_accepted_total", **PAY_F) == 1
    assert metric(harness, "saga_operations_waiting", **PAY_F) == 1
    assert metric(harness, "saga_operation_oldest_age_seconds", **PAY_F) >= 0
    await wait_state(harness, "o-1", (SagaState.SUCCEEDED,))
    assert calls(harness, S.PROCESS_PAYMENT, F) == 1
    _, events = await harness.shard.get("o-1", with_events=True)
    kinds = [e.kind for e in events if e.step == S.PROCESS_PAYMENT]
    assert kinds[:2] == [EventKind.STARTED, EventKind.ACCEPTED] and kinds[-1] is EventKind.SUCCEEDED
    assert EventKind.POLLED in kinds  # 5 s with polls of at most 1 s
    assert all(v == 1 for (o, _), v in harness.caller.net.items() if o == "o-1")
    assert harness.shard.waiting == 0
    assert metric(harness, "saga_operation_answers_total", **PAY_F, answer="in_progress") >= 1
    assert metric(harness, "saga_operation_answers_total", **PAY_F, answer="applied") == 1
    assert metric(harness, "saga_operation_duration_seconds_count", **PAY_F) == 1
    assert metric(harness, "saga_operations_waiting", **PAY_F) == 0


async def test_a_watcher_sees_the_wait_polls_and_completion(harness: Harness) -> None:
    await harness.restart(operations=FAST_POLLS)
    harness.caller.long_running(S.PROCESS_PAYMENT, F, 3.0)
    assert harness.shard is not None
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.RUNNING
    seen = []
    snapshot = []

    async def watch() -> SagaState:
        assert harness.shard is not None
        async for rec, event in harness.shard.watch("o-1"):
            if event is None:
                snapshot.append(rec.steps[S.PROCESS_PAYMENT.number].waiting)
            else:
                seen.append((event.kind, event.step))
        return rec.state

    watcher = asyncio.create_task(watch())
    await wait_state(harness, "o-1", (SagaState.SUCCEEDED,))  # moves the fake clock on
    async with asyncio.timeout(30):
        final = await watcher
    assert snapshot == [F]  # the snapshot: waiting on the charge
    payment = [kind for kind, step in seen if step == S.PROCESS_PAYMENT]
    assert EventKind.POLLED in payment and payment[-1] is EventKind.SUCCEEDED
    assert payment.index(EventKind.POLLED) < payment.index(EventKind.SUCCEEDED)
    assert seen[-1][0] is EventKind.STATE and final is SagaState.SUCCEEDED  # the stream ends at the terminal state


async def test_a_restart_keeps_waiting_without_resending(harness: Harness) -> None:
    await harness.restart(operations=FAST_POLLS)
    harness.caller.long_running(S.PROCESS_PAYMENT, F, 3.0)
    assert harness.shard is not None
    await harness.shard.place_order(order())
    await harness.clock.advance(1.0)
    shard = await harness.restart()
    assert shard.waiting == 1
    await wait_state(harness, "o-1", (SagaState.SUCCEEDED,))
    assert calls(harness, S.PROCESS_PAYMENT, F) == 1


async def test_a_forward_step_past_its_limit_is_compensated_and_cancelled(harness: Harness) -> None:
    policy = OperationPolicy(poll_min_ms=100, poll_max_ms=500, forward_max_ms=2_000)
    await harness.restart(operations=policy)
    harness.caller.long_running(S.PROCESS_PAYMENT, F, math.inf)
    assert harness.shard is not None
    await harness.shard.place_order(order())
    await wait_state(harness, "o-1", (SagaState.FAILED,))
    rec, _ = await harness.shard.get("o-1")
    assert "still in progress after" in rec.steps[S.PROCESS_PAYMENT.number].last_error
    # The refund of a charge still in progress cancels it: nothing stays applied anywhere.
    fkey = idempotency_key(rec.saga_id, S.PROCESS_PAYMENT.id, F)
    assert harness.caller.applied[fkey] == 0 and fkey in harness.caller.tombstones
    assert all(v == 0 for (o, _), v in harness.caller.net.items() if o == "o-1")
    assert rec.steps[S.PROCESS_PAYMENT.number].status is StepStatus.COMPENSATED
    assert metric(harness, "saga_operations_timed_out_total", **PAY_F) == 1


async def test_the_saga_deadline_bounds_a_forward_wait(harness: Harness) -> None:
    await harness.restart(operations=FAST_POLLS)
    harness.caller.long_running(S.PROCESS_PAYMENT, F, math.inf)
    assert harness.shard is not None
    await harness.shard.place_order(order(ttl_ms=3_000))
    await wait_state(harness, "o-1", (SagaState.FAILED,))
    rec, _ = await harness.shard.get("o-1")
    assert "deadline passed during process_payment" in rec.last_error
    assert metric(harness, "saga_ttl_expired_total") == 1  # once, however the deadline was noticed


async def test_a_refund_settling_later_is_waited_on_then_a_late_one_dead_letters(harness: Harness) -> None:
    policy = OperationPolicy(poll_min_ms=100, poll_max_ms=500, compensate_max_ms=4_000)
    await harness.restart(operations=policy)
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="cannot ship")
    harness.caller.long_running(S.PROCESS_PAYMENT, C, 2.0)
    assert harness.shard is not None
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.COMPENSATING  # answered while the refund settles
    await wait_state(harness, "o-1", (SagaState.FAILED,))
    assert calls(harness, S.PROCESS_PAYMENT, C) == 1
    assert all(v == 0 for (o, _), v in harness.caller.net.items() if o == "o-1")

    harness.caller.long_running(S.PROCESS_PAYMENT, C, math.inf)
    await harness.shard.place_order(order("o-2"))
    await wait_state(harness, "o-2", (SagaState.DEAD_LETTERED,))
    rec, _ = await harness.shard.get("o-2")
    assert "still in progress after" in rec.parked_note and rec.steps[S.PROCESS_PAYMENT.number].waiting == 0


async def test_an_unknown_outcome_is_asked_about_instead_of_retried(harness: Harness) -> None:
    # The service applies the charge; its reply is lost (DEADLINE_EXCEEDED).
    original = harness.caller.call

    async def call_losing_reply(payload, step, action, timeout_s):  # type: ignore[no-untyped-def]
        result = await original(payload, step, action, timeout_s)
        if step == S.PROCESS_PAYMENT and action is F:
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "reply lost")
        return result

    harness.caller.call = call_losing_reply  # type: ignore[method-assign]
    assert harness.shard is not None
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.SUCCEEDED
    assert calls(harness, S.PROCESS_PAYMENT, F) == 1  # no second charge call: the service said it was applied
    _, events = await harness.shard.get("o-1", with_events=True)
    asked = [e for e in events if e.kind is EventKind.ASKED]
    assert [(e.step, e.code) for e in asked] == [(S.PROCESS_PAYMENT, "DONE:OK")]


async def test_without_asking_an_unknown_outcome_is_retried_as_before(harness: Harness) -> None:
    await harness.restart(operations=OperationPolicy(ask_unknown=False))
    original = harness.caller.call
    lost = {"n": 0}

    async def call_losing_first_reply(payload, step, action, timeout_s):  # type: ignore[no-untyped-def]
        result = await original(payload, step, action, timeout_s)
        if step == S.PROCESS_PAYMENT and action is F and lost["n"] == 0:
            lost["n"] += 1
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "reply lost")
        return result

    harness.caller.call = call_losing_first_reply  # type: ignore[method-assign]
    assert harness.shard is not None
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.SUCCEEDED
    assert calls(harness, S.PROCESS_PAYMENT, F) == 2 and harness.caller.asked == []


async def test_an_internal_error_the_service_has_no_record_of_is_retried(harness: Harness) -> None:
    """INTERNAL alone fails the step (its effect is unknown) and compensates it; asked, the service has no record of
    the call, so it goes again with the same key and the saga succeeds."""
    harness.caller.fail_with(S.RESERVE_INVENTORY, F, grpc.StatusCode.INTERNAL, times=1)
    assert harness.shard is not None
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.SUCCEEDED
    reserves = [c for c in harness.caller.calls if c.step == S.RESERVE_INVENTORY]
    assert [c.action for c in reserves] == [F, F] and reserves[0].key == reserves[1].key
    _, events = await harness.shard.get("o-1", with_events=True)
    assert [(e.step, e.code) for e in events if e.kind is EventKind.ASKED] == [(S.RESERVE_INVENTORY, "NOT_FOUND")]
    retrying = [e for e in events if e.kind is EventKind.RETRYING]
    assert [(e.step, e.code) for e in retrying] == [(S.RESERVE_INVENTORY, "INTERNAL")]
    assert "not applied" in retrying[0].detail
    reserve = {"step": "reserve_inventory", "action": "forward"}
    assert metric(harness, "saga_operation_answers_total", **reserve, answer="not_found") == 1


async def test_an_internal_error_is_not_retried_without_asking(harness: Harness) -> None:
    await harness.restart(operations=OperationPolicy(ask_unknown=False))
    harness.caller.fail_with(S.RESERVE_INVENTORY, F, grpc.StatusCode.INTERNAL, times=1)
    assert harness.shard is not None
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.FAILED
    assert calls(harness, S.RESERVE_INVENTORY, F) == 1 and calls(harness, S.RESERVE_INVENTORY, Action.COMPENSATE) == 1


async def test_a_service_that_cannot_say_leaves_the_saga_as_before(harness: Harness) -> None:
    harness.caller.ask_unknown = True
    harness.caller.fail_with(S.RESERVE_INVENTORY, F, grpc.StatusCode.UNAVAILABLE, times=2)
    assert harness.shard is not None
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.SUCCEEDED and calls(harness, S.RESERVE_INVENTORY, F) == 3


async def test_a_compensation_is_skipped_when_the_forward_call_was_rejected(harness: Harness) -> None:
    """The saga deadline ends the charge (outcome unknown); by then the service has declined it for good: asked before
    compensating, it says so, and no refund is sent."""
    assert harness.shard is not None

    async def slow_decline(payload, step, action, timeout_s):  # type: ignore[no-untyped-def]
        key = idempotency_key(payload.saga_id, step.id, action)
        harness.caller.calls.append(type(harness.caller.calls[0])(payload.key, step, action, key, timeout_s))
        harness.caller.answered[key] = CallResult(grpc.StatusCode.FAILED_PRECONDITION, "payment declined")
        await harness.clock.sleep(timeout_s)
        return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    original = harness.caller.call

    async def call(payload, step, action, timeout_s):  # type: ignore[no-untyped-def]
        if step == S.PROCESS_PAYMENT and action is F:
            return await slow_decline(payload, step, action, timeout_s)
        return await original(payload, step, action, timeout_s)

    harness.caller.call = call  # type: ignore[method-assign]
    task = asyncio.create_task(harness.shard.place_order(order(ttl_ms=500)))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.FAILED
    assert calls(harness, S.PROCESS_PAYMENT, C) == 0
    assert calls(harness, S.RESERVE_INVENTORY, C) == 1 and calls(harness, S.CREATE_ORDER, C) == 1
    assert metric(harness, "saga_compensations_skipped_total", step="process_payment") == 1
    assert metric(harness, "saga_operation_answers_total", **PAY_F, answer="rejected") == 1
    rec, _ = await harness.shard.get("o-1")
    assert rec.steps[S.PROCESS_PAYMENT.number].status is StepStatus.COMPENSATED


async def test_polls_are_bounded_and_a_restart_spreads_the_overdue_ones(harness: Harness) -> None:
    policy = OperationPolicy(poll_min_ms=100, poll_max_ms=200)
    await harness.restart(operations=policy)
    harness.caller.long_running(S.CREATE_ORDER, F, 30.0)
    assert harness.shard is not None
    for i in range(60):
        await harness.shard.place_order(order(f"o-{i}", ttl_ms=600_000))
    assert harness.shard.waiting == 60
    # Sagas waiting on an operation have no task: the journal's commit window counts no writer for them.
    assert harness.shard.journal.window.writers == 0
    # Down for a minute: every poll is overdue at the restart, and they go out at resume_per_s (here 20 a second).
    await harness.stop()
    await harness.clock.advance(60)
    limits = dataclasses.replace(harness.cfg.limits, resume_per_s=20, max_concurrent_polls=4)
    shard = await harness.start(limits=limits)
    asked_before = len(harness.caller.asked)
    await harness.clock.advance(1.0)
    await harness.quiesce()
    assert len(harness.caller.asked) - asked_before <= 22  # ~20 in the first second, not 60
    for i in range(60):
        await wait_state(harness, f"o-{i}", (SagaState.SUCCEEDED,))
    assert shard.waiting == 0 and calls(harness, S.CREATE_ORDER, F) == 60
    await harness.quiesce()
    assert shard.journal.window.writers == 0  # every saga task ended


async def test_an_operation_the_service_stops_answering_about_is_sent_again(harness: Harness) -> None:
    """GetOperation fails (the service cannot say) for longer than heartbeat_ms: the call goes out again with the same
    key, as a fresh attempt; the service then answers it (here: at once)."""
    await harness.restart(operations=OperationPolicy(poll_min_ms=100, poll_max_ms=200, heartbeat_ms=1_000))
    harness.caller.long_running(S.PROCESS_PAYMENT, F, math.inf)
    assert harness.shard is not None
    await harness.shard.place_order(order())
    harness.caller.ask_unknown = True  # from now on the service cannot say
    harness.caller.scripts.pop((S.PROCESS_PAYMENT, F))  # and a call sent again is answered OK
    await wait_state(harness, "o-1", (SagaState.SUCCEEDED,))
    keys = {c.key for c in harness.caller.calls if c.step == S.PROCESS_PAYMENT and c.action is F}
    assert calls(harness, S.PROCESS_PAYMENT, F) == 2 and len(keys) == 1
    rec, events = await harness.shard.get("o-1", with_events=True)
    resent = [e for e in events if e.kind is EventKind.RETRYING and e.step == S.PROCESS_PAYMENT]
    assert len(resent) == 1 and "no word on the operation" in resent[0].detail
    assert rec.steps[S.PROCESS_PAYMENT.number].forward_attempts == 2


async def test_an_accepted_call_the_service_forgot_is_sent_again(harness: Harness) -> None:
    await harness.restart(operations=FAST_POLLS)
    harness.caller.long_running(S.RESERVE_INVENTORY, F, 60.0)
    assert harness.shard is not None
    await harness.shard.place_order(order())
    harness.caller.operations.clear()  # the service lost its record of the operation
    harness.caller.scripts.pop((S.RESERVE_INVENTORY, F))
    await wait_state(harness, "o-1", (SagaState.SUCCEEDED,))
    assert calls(harness, S.RESERVE_INVENTORY, F) == 2
    _, events = await harness.shard.get("o-1", with_events=True)
    assert any(e.kind is EventKind.RETRYING and e.code == "NOT_FOUND" for e in events)
