"""The engine's logic with a fake caller and a fake clock (no sleeps): ordering, compensation, retries, deadlines,
dead letters, recovery, idempotency of PlaceOrder."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from coordinator.saga.errors import Overloaded, PayloadMismatch, ShuttingDown
from coordinator.saga.model import Action, SagaState, StepStatus
from tests.helpers import order_flow
from tests.helpers.order_flow import STEPS

from .conftest import Harness, order

F, C = Action.FORWARD, Action.COMPENSATE
S = order_flow


async def settle(h: Harness, task: asyncio.Task, step_s: float = 0.01, limit_s: float = 120) -> object:
    """Advances the fake clock until the task is done."""
    waited = 0.0
    await h.quiesce()
    while not task.done():
        await h.clock.advance(step_s)
        waited += step_s
        assert waited < limit_s, "saga did not settle"
    return task.result()


async def test_success_runs_every_step_in_order(harness: Harness) -> None:
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.SUCCEEDED
    assert harness.caller.steps_called("o-1", F) == list(STEPS)
    assert harness.caller.steps_called("o-1", C) == []
    assert all(p.status is StepStatus.SUCCEEDED for p in placed.saga.steps.values())


async def test_decline_compensates_earlier_steps_in_reverse(harness: Harness) -> None:
    harness.caller.fail_with(S.PROCESS_PAYMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="payment declined")
    placed = await harness.shard.place_order(order(token="tok_declined"))
    assert placed.saga.state is SagaState.FAILED
    # The classified status code leads, then the service's words.
    assert placed.saga.last_error == "process_payment failed: FAILED_PRECONDITION: payment declined"
    # The rejected step applied nothing, so only the two before it are undone, last first.
    assert harness.caller.steps_called("o-1", C) == [S.RESERVE_INVENTORY, S.CREATE_ORDER]
    assert all(v == 0 for (o, _), v in harness.caller.net.items() if o == "o-1")
    assert harness.caller.steps_called("o-1", F) == [S.CREATE_ORDER, S.RESERVE_INVENTORY, S.PROCESS_PAYMENT]


async def test_transient_errors_are_retried_with_the_same_key(harness: Harness) -> None:
    harness.caller.fail_with(S.RESERVE_INVENTORY, F, grpc.StatusCode.UNAVAILABLE, times=2)
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.SUCCEEDED
    keys = {c.key for c in harness.caller.calls if c.step == S.RESERVE_INVENTORY}
    assert len(keys) == 1 and placed.saga.steps[S.RESERVE_INVENTORY.number].forward_attempts == 3


async def test_exhausted_retries_compensate_the_unknown_step_too(harness: Harness) -> None:
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.UNAVAILABLE)
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.FAILED
    assert "after 4 attempts" in placed.saga.last_error
    # UNAVAILABLE may have applied: shipping is compensated as well (its tombstone makes that safe).
    assert harness.caller.steps_called("o-1", C) == list(reversed(STEPS))


async def test_internal_error_is_not_retried_but_compensated(harness: Harness) -> None:
    """INTERNAL leaves the outcome unknown: with a service that cannot say what became of the call (no GetOperation),
    the step is not retried blind; it fails and is compensated (test_operations: retried when the service says it
    applied nothing)."""
    harness.caller.ask_unknown = True
    harness.caller.fail_with(S.CREATE_ORDER, F, grpc.StatusCode.INTERNAL)
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.FAILED
    assert harness.caller.attempts[("o-1", S.CREATE_ORDER, F)] == 1
    assert harness.caller.steps_called("o-1", C) == [S.CREATE_ORDER]


async def test_a_persistent_internal_error_never_applied_is_retried_then_compensated(harness: Harness) -> None:
    harness.caller.fail_with(S.CREATE_ORDER, F, grpc.StatusCode.INTERNAL)
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.FAILED
    attempts = harness.caller.attempts[("o-1", S.CREATE_ORDER, F)]
    assert attempts == harness.cfg.forward.max_attempts  # the forward policy's budget, no more
    assert harness.caller.steps_called("o-1", C) == [S.CREATE_ORDER]  # its key tombstoned all the same


async def test_deadline_while_step_in_flight_compensates_it(harness: Harness) -> None:
    harness.caller.hang(S.PROCESS_PAYMENT, F)
    task = asyncio.create_task(harness.shard.place_order(order(ttl_ms=300)))
    await harness.clock.advance(0.29)
    assert not task.done()
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.FAILED
    assert "deadline passed during process_payment (ttl 300 ms)" in placed.saga.last_error
    assert harness.caller.steps_called("o-1", C) == [S.PROCESS_PAYMENT, S.RESERVE_INVENTORY, S.CREATE_ORDER]
    assert harness.clock.monotonic() < 0.4


async def test_retries_never_sleep_past_the_deadline(harness: Harness) -> None:
    await harness.restart(
        forward=harness.cfg.forward.__class__(
            max_attempts=50, initial_backoff_ms=100, max_backoff_ms=10_000, attempt_timeout_ms=1000
        )
    )
    harness.caller.fail_with(S.CREATE_ORDER, F, grpc.StatusCode.UNAVAILABLE)
    task = asyncio.create_task(harness.shard.place_order(order(ttl_ms=1000)))
    placed = await settle(harness, task, step_s=0.01)
    assert placed.saga.state is SagaState.FAILED
    assert "deadline passed during create_order" in placed.saga.last_error
    # It stopped at the deadline, not after a long sleep that crosses it.
    assert harness.clock.monotonic() <= 1.0 + 0.02
    _, events = await harness.shard.get("o-1", with_events=True)
    retry_times = [e.at_epoch_ms for e in events if e.kind == "started" and e.action == F]
    assert max(retry_times) - events[0].at_epoch_ms < 1000


async def test_deadline_that_passed_during_downtime_compensates_at_recovery(harness: Harness) -> None:
    harness.caller.hang(S.RESERVE_INVENTORY, F)
    task = asyncio.create_task(harness.shard.place_order(order(ttl_ms=5_000)))
    await harness.clock.advance(0.1)
    await harness.stop()  # the shard "goes down" with the reservation in flight
    with pytest.raises(ShuttingDown):
        await task
    harness.clock.jump_wall_clock(60_000)  # the shard comes back a minute later
    harness.caller.scripts.clear()
    await harness.start()
    await settle(harness, asyncio.create_task(_wait_terminal(harness, "o-1")))
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.FAILED
    assert "deadline passed during reserve_inventory" in rec.last_error
    # No forward call after the restart; the in-flight reservation is compensated (tombstoned here).
    fwd_after = [c for c in harness.caller.calls if c.action is F and c.step == S.SCHEDULE_SHIPMENT]
    assert fwd_after == []
    assert harness.caller.steps_called("o-1", C) == [S.RESERVE_INVENTORY, S.CREATE_ORDER]


async def _wait_terminal(h: Harness, order_id: str, states: frozenset[SagaState] | None = None) -> None:
    wanted = states or frozenset({SagaState.SUCCEEDED, SagaState.FAILED, SagaState.RESOLVED, SagaState.DEAD_LETTERED})
    while True:
        rec, _ = await h.shard.get(order_id)
        if rec.state in wanted:
            return
        await asyncio.sleep(0.001)


async def test_failing_compensation_dead_letters_then_retry_finishes(harness: Harness) -> None:
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="unshippable")
    harness.caller.fail_with(S.PROCESS_PAYMENT, C, grpc.StatusCode.INTERNAL, msg="refund service broken")
    task = asyncio.create_task(harness.shard.place_order(order()))
    placed = await settle(harness, task)
    assert placed.saga.state is SagaState.DEAD_LETTERED
    # The cause and the dead-letter note are separate fields; the client sees both.
    assert placed.saga.last_error == "schedule_shipment failed: FAILED_PRECONDITION: unshippable"
    assert placed.saga.parked_note == (
        "compensation of process_payment failed after 5 attempts (INTERNAL: refund service broken); "
        "parked for an operator"
    )
    assert placed.saga.message == f"{placed.saga.last_error}; {placed.saga.parked_note}"
    rows = await harness.shard.dead_letters(0, False, 10, 0)
    assert [(r.order_id, r.step, r.attempts) for r in rows] == [("o-1", int(S.PROCESS_PAYMENT), 5)]
    # A dead letter survives a restart and is not resumed by it.
    await harness.restart()
    assert [r.order_id for r in await harness.shard.dead_letters(0, False, 10, 0)] == ["o-1"]
    harness.caller.scripts.pop((S.PROCESS_PAYMENT, C))
    await harness.shard.retry_dead_letter("o-1", "alice", "refund service fixed")
    await settle(harness, asyncio.create_task(_wait_terminal(harness, "o-1")))
    rec, events = await harness.shard.get("o-1", with_events=True)
    assert rec.state is SagaState.FAILED
    # Once retried, the saga says why it failed, not that it was parked (and so does a restart).
    assert rec.last_error == "schedule_shipment failed: FAILED_PRECONDITION: unshippable" and rec.parked_note == ""
    await harness.restart()
    again = (await harness.shard.get("o-1"))[0]
    assert (again.last_error, again.parked_note) == (rec.last_error, "")
    assert any(e.kind == "admin_retry" and "alice" in e.detail for e in events)
    assert await harness.shard.dead_letters(0, False, 10, 0) == []
    # Exactly one refund, one release, one cancel: the net effect is zero everywhere.
    assert all(v == 0 for (o, _), v in harness.caller.net.items() if o == "o-1")


async def test_resolve_dead_letter(harness: Harness) -> None:
    harness.caller.fail_with(S.CREATE_ORDER, F, grpc.StatusCode.INTERNAL)
    harness.caller.fail_with(S.CREATE_ORDER, C, grpc.StatusCode.UNAVAILABLE)
    await settle(harness, asyncio.create_task(harness.shard.place_order(order())))
    rec = await harness.shard.resolve_dead_letter("o-1", "bob", "cancelled by hand in the order DB")
    assert rec.state is SagaState.RESOLVED
    rows = await harness.shard.dead_letters(0, True, 10, 0)
    assert rows[0].closed_note.startswith("resolved by bob")
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.RESOLVED


async def test_fifty_concurrent_duplicates_make_one_saga(harness: Harness) -> None:
    results = await asyncio.gather(*(harness.shard.place_order(order()) for _ in range(50)))
    assert {r.saga.saga_id for r in results} == {results[0].saga.saga_id}
    assert harness.caller.attempts[("o-1", S.CREATE_ORDER, F)] == 1
    again = await harness.shard.place_order(order())
    assert again.saga.saga_id == results[0].saga.saga_id


async def test_same_order_different_payload_is_refused(harness: Harness) -> None:
    await harness.shard.place_order(order())
    with pytest.raises(PayloadMismatch):
        await harness.shard.place_order(order(amount=1))
    # ttl_ms and no_wait are not part of the payload.
    assert (await harness.shard.place_order(order(ttl_ms=5, no_wait=True))).saga.state is SagaState.SUCCEEDED


async def test_no_wait_answers_pending_once_durable(harness: Harness) -> None:
    harness.caller.hang(S.CREATE_ORDER, F)
    placed = await harness.shard.place_order(order(no_wait=True))
    assert placed.pending and placed.saga.state is SagaState.RUNNING
    # It is on disk: a fresh reader sees it.
    assert (await harness.journal.get_by_order("o-1")) is not None


async def test_overload_sheds_without_writing(harness: Harness) -> None:
    await harness.restart(limits=harness.cfg.limits.__class__(max_in_flight=3))
    harness.caller.hang(S.CREATE_ORDER, F)
    for i in range(3):
        await harness.shard.place_order(order(f"o-{i}", no_wait=True))
    with pytest.raises(Overloaded) as e:
        await harness.shard.place_order(order("o-shed"))
    assert e.value.retry_after_ms > 0
    assert await harness.journal.get_by_order("o-shed") is None


async def test_restart_resumes_in_flight_step_with_the_same_key(harness: Harness) -> None:
    harness.caller.hang(S.PROCESS_PAYMENT, F)
    task = asyncio.create_task(harness.shard.place_order(order()))
    await harness.clock.advance(0.01)
    await harness.stop()
    with pytest.raises(ShuttingDown):
        await task
    keys_before = [c.key for c in harness.caller.calls if c.step == S.PROCESS_PAYMENT]
    harness.caller.scripts.clear()
    await harness.start()
    await settle(harness, asyncio.create_task(_wait_terminal(harness, "o-1")))
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.SUCCEEDED
    keys_after = [c.key for c in harness.caller.calls if c.step == S.PROCESS_PAYMENT]
    assert set(keys_after) == set(keys_before) and len(keys_after) == 2
    assert harness.caller.attempts[("o-1", S.CREATE_ORDER, F)] == 1  # finished steps are not re-run
    # Restarting again on a finished journal does nothing.
    await harness.restart()
    assert harness.shard.in_flight == 0


async def test_automatic_redrive_of_dead_letters(harness: Harness) -> None:
    harness.caller.fail_with(S.CREATE_ORDER, F, grpc.StatusCode.INTERNAL)
    harness.caller.fail_with(S.CREATE_ORDER, C, grpc.StatusCode.UNAVAILABLE, times=5)
    await harness.restart(dead_letter_redrive_s=60)
    placed = await settle(harness, asyncio.create_task(harness.shard.place_order(order())))
    assert placed.saga.state is SagaState.DEAD_LETTERED
    # The compensation works again by now (only its first 5 attempts failed); the next re-drive finishes it.
    done = _wait_terminal(harness, "o-1", frozenset({SagaState.FAILED}))
    await settle(harness, asyncio.create_task(done), step_s=1.0)
    rec, events = await harness.shard.get("o-1", with_events=True)
    assert rec.state is SagaState.FAILED
    assert any(e.kind == "admin_retry" and "auto-redrive" in e.detail for e in events)
