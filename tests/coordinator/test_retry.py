"""The durable retry schedule (issue 20): budgets and due times come from the journal, so restarts change nothing.

Pure rules of retry.py first, then the engine over a real journal with a fake clock and a fake caller, restarted on
the same journal file as a crashed process would be.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.definitions.model import Step
from coordinator.config import RetryPolicy, ShardConfig
from coordinator.saga import retry
from coordinator.saga.errors import CallResult, scrub
from coordinator.saga.model import Action, SagaState
from coordinator.saga.record import Event, EventKind

from .conftest import Harness, order

F, C = Action.FORWARD, Action.COMPENSATE
from tests.helpers import order_flow  # noqa: E402

S = order_flow

# ---- the pure rules -------------------------------------------------------------------------------------------------


@given(
    attempts=st.integers(1, 60),
    spent_ms=st.integers(0, 20_000),
    seed=st.integers(0, 2**32),
)
def test_decide_respects_both_bounds(attempts: int, spent_ms: int, seed: int) -> None:
    policy = RetryPolicy(max_attempts=20, initial_backoff_ms=50, max_backoff_ms=1_000, max_elapsed_ms=10_000)
    decision = retry.decide(policy, attempts, spent_ms, random.Random(seed))
    if attempts >= policy.max_attempts:
        assert not decision.retry
    if decision.retry:
        bound_ms = min(50 * 2 ** (attempts - 1), 1_000)
        assert 0 <= decision.wait_ms <= bound_ms
        assert decision.spent_ms == spent_ms + decision.wait_ms <= policy.max_elapsed_ms


def test_backoff_bounds_grow_then_cap() -> None:
    policy = RetryPolicy(initial_backoff_ms=50, max_backoff_ms=1_000, multiplier=2.0)
    assert [retry.backoff_bound_s(policy, n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_attempts_only_when_no_window() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed_ms=0)
    assert retry.decide(policy, 2, 10**9, random.Random(1)).retry
    assert not retry.decide(policy, 3, 0, random.Random(1)).retry


def test_remaining_wait_is_clamped_to_the_drawn_wait() -> None:
    assert retry.remaining_wait_s(0, 0, 5_000) == 0.0
    assert retry.remaining_wait_s(10_000, 400, 9_800) == pytest.approx(0.2)
    # The wall clock jumped back an hour while the shard was down: wait no longer than the drawn 400 ms.
    assert retry.remaining_wait_s(10_000, 400, 10_000 - 3_600_000) == pytest.approx(0.4)
    # ... or forward: due now.
    assert retry.remaining_wait_s(10_000, 400, 10_000 + 3_600_000) == 0.0


# ---- the engine, across restarts ------------------------------------------------------------------------------------


async def _advance_until(h: Harness, done: object, step_s: float = 0.005, limit_s: float = 600.0) -> None:
    """Advances the fake clock in small steps until done() holds."""
    waited = 0.0
    await h.quiesce()
    while not done():  # type: ignore[operator]
        await h.clock.advance(step_s)
        waited += step_s
        assert waited < limit_s, "condition never held"


async def _events(h: Harness, order_id: str) -> list[Event]:
    _, events = await h.shard.get(order_id, with_events=True)  # type: ignore[union-attr]
    return events


def _starts(events: list[Event], step: Step, action: Action) -> list[int]:
    return [e.at_epoch_ms for e in events if e.kind is EventKind.STARTED and e.step == step and e.action == action]


async def _refund_never_works(h: Harness, crash_after_attempts: set[int]) -> list[Event]:
    """Places an order whose shipment is refused and whose refund fails forever; restarts the shard (same journal,
    same clock) right after each refund attempt listed; returns the saga's events once it is parked."""
    h.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="unshippable")
    h.caller.fail_with(S.PROCESS_PAYMENT, C, grpc.StatusCode.UNAVAILABLE, msg="refunds are down")
    await h.shard.place_order(order(no_wait=True))  # type: ignore[union-attr]
    refunds = ("o-1", S.PROCESS_PAYMENT, C)
    for n in sorted(crash_after_attempts):
        await _advance_until(h, lambda n=n: h.caller.attempts[refunds] >= n)
        await h.quiesce()  # the attempt's RETRYING (with its due time) is on disk: then the process "dies"
        await h.restart()
    await _advance_until(h, lambda: h.shard.in_flight == 0)  # type: ignore[union-attr]
    return await _events(h, "o-1")


async def test_next_attempt_is_due_at_the_same_time_across_a_restart(tmp_path: Path) -> None:
    runs: list[list[int]] = []
    for name, crashes in (("steady", set()), ("restarted", {2})):
        (tmp_path / name).mkdir()
        h = Harness(tmp_path / name)
        await h.start()
        try:
            events = await _refund_never_works(h, crashes)
        finally:
            await h.stop()
        runs.append(_starts(events, S.PROCESS_PAYMENT, C))
    steady, restarted = runs
    # Attempt 3 was scheduled (and journaled) before the restart: it starts at the same moment either way.
    assert abs(steady[2] - restarted[2]) <= 1, (steady, restarted)
    # And the budget did not restart with the process: 5 attempts in both runs (FAST_COMPENSATE).
    assert len(steady) == len(restarted) == 5


async def test_a_crash_loop_does_not_grant_fresh_attempts(harness: Harness) -> None:
    # A restart after every refund attempt: before issue 20, each start granted the whole policy again.
    events = await _refund_never_works(harness, {1, 2, 3, 4})
    assert len(_starts(events, S.PROCESS_PAYMENT, C)) == harness.cfg.compensate.max_attempts == 5
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.DEAD_LETTERED
    assert "failed after 5 attempts" in rec.parked_note
    (row,) = await harness.shard.dead_letters(0, False, 10, 0)
    assert row.attempts == 5


async def _crash_during_every_attempt(h: Harness, step: Step, action: Action, into_call_s: float = 0.0) -> list[Event]:
    """Restarts the shard `into_call_s` into every attempt of (step, action) (the call hangs: its outcome is never
    known) until the saga stops; returns its events."""
    key = ("o-1", step, action)
    for n in range(1, 100):
        await _advance_until(h, lambda n=n: h.caller.attempts[key] >= n or h.shard.in_flight == 0)  # type: ignore[union-attr]
        if h.caller.attempts[key] < n:
            break
        await h.clock.advance(into_call_s)
        await h.quiesce()  # STARTED is durable, the call hangs: the process "dies" mid-call
        await h.restart()
        await h.quiesce()
        assert h.caller.attempts[key] == n  # no attempt is sent at once on restart: it waits its backoff first
    return await _events(h, "o-1")


async def test_a_crash_mid_compensation_spends_the_attempt(harness: Harness) -> None:
    """Issue 27.1: a refund that never answers, its shard killed during every call. Before, each restart sent the
    interrupted attempt again at once, uncounted: 50 refunds under a policy of 12. Now each interrupted attempt is
    journaled as spent (RETRYING, outcome unknown, with a backoff drawn) and the saga parks after the policy's 5."""
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="unshippable")
    harness.caller.hang(S.PROCESS_PAYMENT, C)
    await harness.shard.place_order(order(no_wait=True))
    events = await _crash_during_every_attempt(harness, S.PROCESS_PAYMENT, C)
    starts = _starts(events, S.PROCESS_PAYMENT, C)
    assert len(starts) == harness.cfg.compensate.max_attempts == 5
    refunds = [e for e in events if e.step == S.PROCESS_PAYMENT and e.action == C]
    settled = [e for e in refunds if e.kind is EventKind.RETRYING and "shard stopped" in e.detail]
    assert len(settled) == 4  # every interrupted attempt but the last (which failed the budget) drew a backoff
    assert all(e.code == "UNKNOWN" for e in settled)
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.DEAD_LETTERED
    assert "failed after 5 attempts" in rec.parked_note
    (row,) = await harness.shard.dead_letters(0, False, 10, 0)
    assert row.attempts == 5


async def test_a_crash_mid_forward_call_spends_the_attempt(harness: Harness) -> None:
    """The same for a forward step: the interrupted attempts count against its policy (4), the step fails with an
    unknown outcome, and so it is compensated (its key tombstoned against the call still hanging)."""
    harness.caller.hang(S.PROCESS_PAYMENT, F)
    await harness.shard.place_order(order(no_wait=True))
    events = await _crash_during_every_attempt(harness, S.PROCESS_PAYMENT, F)
    assert len(_starts(events, S.PROCESS_PAYMENT, F)) == harness.cfg.forward.max_attempts == 4
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.FAILED
    assert rec.last_error.startswith("process_payment failed after 4 attempts: UNKNOWN: outcome unknown")
    assert harness.caller.attempts[("o-1", S.PROCESS_PAYMENT, C)] == 1  # compensated: its outcome was unknown


async def test_an_interrupted_attempt_counts_its_time_against_the_window(harness: Harness) -> None:
    """A policy bounded by time alone: each interrupted 1 s attempt spends up to its timeout of the 2.5 s window."""
    await harness.restart(
        compensate=RetryPolicy(max_attempts=100, initial_backoff_ms=10, max_backoff_ms=10, max_elapsed_ms=2_500)
    )
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION)
    harness.caller.hang(S.PROCESS_PAYMENT, C)
    await harness.shard.place_order(order(no_wait=True))
    await _crash_during_every_attempt(harness, S.PROCESS_PAYMENT, C, into_call_s=0.9)
    starts = _starts(await _events(harness, "o-1"), S.PROCESS_PAYMENT, C)
    assert len(starts) == 3  # 0.9 + 0.9 + 0.9 s > 2.5 s: the third interrupted attempt ends the window
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.DEAD_LETTERED


async def test_a_lost_operation_resent_without_backoff_still_passes_the_budget(harness: Harness) -> None:
    """A service that accepts the refund and then forgets it (GetOperation: NOT_FOUND) asks for a re-send with no
    backoff drawn; the budget is checked before each send, so the refunds stop at the policy's 5."""
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION)
    harness.caller.script(
        S.PROCESS_PAYMENT, C, lambda p, n: CallResult(grpc.StatusCode.OK, in_progress=True, poll_after_ms=10)
    )
    await harness.shard.place_order(order(no_wait=True))
    await _advance_until(harness, lambda: harness.shard.in_flight == 0, limit_s=120)
    events = await _events(harness, "o-1")
    assert len(_starts(events, S.PROCESS_PAYMENT, C)) == 5
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is SagaState.DEAD_LETTERED
    assert "retry budget spent (5 attempts" in rec.parked_note


async def test_a_restart_waits_out_the_journaled_backoff(harness: Harness) -> None:
    await harness.restart(
        compensate=RetryPolicy(max_attempts=5, initial_backoff_ms=2_000, max_backoff_ms=2_000, max_elapsed_ms=0),
    )
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION)
    harness.caller.fail_with(S.PROCESS_PAYMENT, C, grpc.StatusCode.UNAVAILABLE)
    await harness.shard.place_order(order(no_wait=True))
    refunds = ("o-1", S.PROCESS_PAYMENT, C)
    await _advance_until(harness, lambda: harness.caller.attempts[refunds] == 1)
    await harness.quiesce()
    events = await _events(harness, "o-1")
    (retrying,) = [e for e in events if e.kind is EventKind.RETRYING and e.action == C]
    due = retrying.at_epoch_ms + retrying.wait_ms
    await harness.restart()
    # Until the journaled due time, the restarted shard sends nothing.
    while harness.clock.now_epoch_ms() < due - 5:
        await harness.clock.advance(0.005)
        assert harness.caller.attempts[refunds] == 1
    await _advance_until(harness, lambda: harness.caller.attempts[refunds] == 2)
    assert _starts(await _events(harness, "o-1"), S.PROCESS_PAYMENT, C)[1] >= due


async def test_dead_letter_reports_every_attempt_across_operator_retries(harness: Harness) -> None:
    events = await _refund_never_works(harness, set())
    assert len(_starts(events, S.PROCESS_PAYMENT, C)) == 5
    # The operator retries while the refund service is still down: a fresh budget of 5, and the dead letter now
    # says 10 attempts, as the events do.
    await harness.shard.retry_dead_letter("o-1", "alice", "try again")
    await _advance_until(harness, lambda: harness.shard.in_flight == 0)
    events = await _events(harness, "o-1")
    assert len(_starts(events, S.PROCESS_PAYMENT, C)) == 10
    open_rows = await harness.shard.dead_letters(0, False, 10, 0)
    assert [r.attempts for r in open_rows] == [10]
    rec, _ = await harness.shard.get("o-1")
    assert "after 10 attempts" in rec.parked_note


async def test_forward_step_rides_out_a_short_outage(harness: Harness) -> None:
    """With the default forward policy, a payment service down for 5 s does not fail the order."""
    await harness.restart(forward=RetryPolicy())
    clock = harness.clock
    harness.caller.script(
        S.PROCESS_PAYMENT,
        F,
        lambda p, n: (
            CallResult(grpc.StatusCode.UNAVAILABLE, "down")
            if clock.monotonic() < 5.0
            else CallResult(grpc.StatusCode.OK)
        ),
    )
    task = asyncio.create_task(harness.shard.place_order(order()))
    await _advance_until(harness, task.done, step_s=0.01)
    placed = task.result()
    assert placed.saga.state is SagaState.SUCCEEDED
    assert placed.saga.steps[S.PROCESS_PAYMENT.number].forward_attempts > 5  # the old default gave up after 5 (~0.5 s)


async def test_forward_step_gives_up_at_its_retry_window(harness: Harness) -> None:
    await harness.restart(forward=RetryPolicy())
    harness.caller.fail_with(S.PROCESS_PAYMENT, F, grpc.StatusCode.UNAVAILABLE, msg="down")
    task = asyncio.create_task(harness.shard.place_order(order()))
    await _advance_until(harness, task.done, step_s=0.01)
    placed = task.result()
    assert placed.saga.state is SagaState.FAILED
    assert placed.saga.last_error.startswith("process_payment failed after ")
    assert placed.saga.last_error.endswith("attempts: UNAVAILABLE: down")
    # It stopped within the 10 s window (and well before the 30 s deadline).
    assert 5.0 < harness.clock.monotonic() <= 10.5


@pytest.mark.parametrize(("outage_s", "parked"), [(240.0, False), (360.0, True)])
async def test_default_compensation_rides_out_minutes_then_parks(
    harness: Harness, outage_s: float, parked: bool
) -> None:
    """The default compensation policy keeps trying for 5 minutes: a refund API down for 4 minutes is ridden out, one
    down for 6 minutes parks the saga for an operator."""
    await harness.restart(compensate=ShardConfig().compensate)
    clock = harness.clock
    harness.caller.fail_with(S.SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg="unshippable")
    harness.caller.script(
        S.PROCESS_PAYMENT,
        C,
        lambda p, n: (
            CallResult(grpc.StatusCode.UNAVAILABLE, "down")
            if clock.monotonic() < outage_s
            else CallResult(grpc.StatusCode.OK)
        ),
    )
    await harness.shard.place_order(order(no_wait=True))
    await _advance_until(harness, lambda: harness.shard.in_flight == 0, step_s=0.5, limit_s=900)
    rec, _ = await harness.shard.get("o-1")
    assert rec.state is (SagaState.DEAD_LETTERED if parked else SagaState.FAILED)
    if parked:
        assert 300 - 15 <= clock.monotonic() <= 300 + 5  # the 5-minute window, less at most one 15 s wait


# ---- what a downstream error leaves in the journal ----------------------------------------------------------------


def test_scrub_bounds_and_redacts() -> None:
    assert scrub("card 4242 4242 4242 4242 declined") == "card [redacted] declined"
    assert scrub("token tok_live_abc123 refused") == "token [redacted] refused"
    bounded = scrub("word " * 200)
    assert len(bounded) == 200 and bounded.endswith("…")
    assert scrub("x" * 1000) == "[redacted]"  # a long opaque string may be a secret
    assert scrub("failed to connect;\n  last error: refused") == "failed to connect; last error: refused"
    summary = CallResult(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses").summary
    assert summary == "UNAVAILABLE: failed to connect to all addresses"  # the classified code leads


async def test_downstream_error_text_is_bounded_and_scrubbed_in_the_journal(harness: Harness) -> None:
    """A service that echoes the card or token in its error does not get it into last_error, events or logs."""
    leak = "declined: card 4111-1111-1111-1111 token tok_ok " + "padding " * 100
    harness.caller.fail_with(S.PROCESS_PAYMENT, F, grpc.StatusCode.FAILED_PRECONDITION, msg=leak)
    placed = await harness.shard.place_order(order())
    assert placed.saga.state is SagaState.FAILED
    events = await _events(harness, "o-1")
    texts = [placed.saga.last_error, placed.saga.message, *(e.detail for e in events)]
    assert all("4111" not in t and "tok_ok" not in t and len(t) < 300 for t in texts), texts
    assert placed.saga.last_error.startswith("process_payment failed: FAILED_PRECONDITION: declined: card [redacted]")
