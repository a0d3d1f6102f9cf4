"""Runs one saga from wherever its journal says it stands to SUCCEEDED, FAILED or DEAD_LETTERED.

Write-ahead (DESIGN contract 1): "step k, attempt n, started" is durable before the RPC leaves; the outcome is queued
right after the reply and committed together with the next intent (or the terminal state), so it is durable before the
next step starts, at one commit per step. Retries follow the durable schedule of retry.py: the budget (attempts and
retry time) and the due time of the next attempt come from the journal, so a restart neither resets the budget nor
fires the next attempt early. Forward retries are also bounded by the saga deadline; compensations are not.

Every call ends by itself: the Caller gives each attempt its timeout (forward: never past the saga deadline), as gRPC
deadlines do, so the engine never races a call against a timer of its own.

One class, a little over 600 lines: forward steps, compensation, the retry budget, unknown outcomes and long-running
operations are the branches of one state machine over one SagaRun, and each branch journals through the same
_append; split across modules, every one of them would reach back into the others' private helpers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from loguru import logger

from common import tracing
from common.definitions.model import Definition, Values
from common.definitions.model import Step as StepDef
from coordinator import crashpoints
from coordinator.clock import Clock
from coordinator.config import OperationPolicy, RetryPolicy, ShardConfig
from coordinator.engine import transitions
from coordinator.engine.caller import Caller, rpc_attributes
from coordinator.journal import DeadLetterOpen, Journal, Record
from coordinator.logs import at_step, saga_context
from coordinator.metrics import ShardMetrics
from coordinator.saga import retry
from coordinator.saga.errors import RETRY_IF_NOT_APPLIED, CallClass, CallResult, OperationAnswer, OperationState
from coordinator.saga.model import Action, SagaState, StepStatus
from coordinator.saga.policies import Policies
from coordinator.saga.record import Event, EventKind, SagaRecord, asks_first


class StepOutcome(enum.Enum):
    """How a forward step ended."""

    DONE = "done"
    FAILED = "failed"  # for good: compensate
    EXPIRED = "expired"  # the saga deadline passed: compensate, this step included
    WAITING = "waiting"  # the service accepted the call and finishes it later: the saga waits (Shard's Poller)


@dataclass(frozen=True, slots=True)
class ForwardResult:
    outcome: StepOutcome
    message: str = ""
    """Why the step failed (the saga's failure cause); empty unless FAILED."""


@dataclass(frozen=True, slots=True)
class CompensationResult:
    done: bool
    attempts: int
    """Attempts of this compensation ever made (all rounds): what the dead letter reports."""
    last_error: str = ""
    waiting: bool = False
    """The service accepted the compensation and finishes it later: the saga waits."""


@dataclass(eq=False)
class SagaRun:
    """A saga being driven: the engine's working record (ahead of the disk by at most the uncommitted tail) and the
    durable view that readers see (only events already committed are folded into it)."""

    record: SagaRecord
    flow: Definition
    """The definition it runs (record.definition_hash), for its whole life."""
    values: Values
    """What its requests are built from: its input, identity and the outputs of its steps so far."""
    deadline_mono: float
    view: SagaRecord
    done: asyncio.Future[None]
    listeners: list[Callable[[Event, SagaRecord], None]] = field(default_factory=list)
    created: asyncio.Future[None] | None = None
    """Resolves once the saga's creation is durable (None for a saga loaded from the journal)."""
    write_error: BaseException | None = None
    task: asyncio.Task[None] | None = None
    trace: Any = None
    """Its spans, under the journaled context (common.tracing.saga: made at once, or held until the saga's end is
    known when its trace is not sampled); None with tracing off."""
    trace_id: str = ""
    resumed: bool = False
    """Loaded from the journal (a restart, a failover) rather than created by this process: marked on its spans."""


@functools.lru_cache(maxsize=4096)
def _span_of(service: str, step_id: str, action: Action, method: str) -> tuple[str, dict[str, Any]]:
    """The name and the fixed attributes of the span of a call to step's service (built once). The action is in the
    name ("forward create_order", "get_operation compensate ..."), not an attribute: each attribute costs every span
    its encoding."""
    fields = {**rpc_attributes(service, method), "saga.step": step_id}
    if method == "GetOperation":
        return f"get_operation {action.label} {step_id}", fields
    return f"{action.label} {step_id}", fields


class Engine:
    def __init__(
        self,
        cfg: ShardConfig,
        journal: Journal,
        caller: Caller,
        clock: Clock,
        rng: random.Random,
        metrics: ShardMetrics | None = None,
    ) -> None:
        self._metrics = metrics or ShardMetrics()
        self._cfg = cfg
        self.policies = Policies(cfg)
        self._journal = journal
        self._caller = caller
        self._clock = clock
        self._rng = rng

    async def drive(self, run: SagaRun) -> None:
        """Moves the saga on until it is terminal or parked. Cancelling it is safe: the journal holds where it was."""
        saga = run.record
        fields = {"trace_id": run.trace_id} if run.trace_id else {}
        with saga_context(saga.saga_id, saga.order_id, **fields):
            if saga.waiting_on() is not None:
                return  # a service is finishing a call of this saga: the shard's poller asks it, then drives on
            if saga.state is SagaState.RUNNING:
                await self._forward(run)
            if saga.state is SagaState.COMPENSATING and saga.waiting_on() is None:
                await self._compensate(run)

    # ---- forward --------------------------------------------------------------------------------------------------

    async def _forward(self, run: SagaRun) -> None:
        saga = run.record
        while (number := saga.next_forward(run.flow)) is not None:
            step = run.flow.step(number)
            progress = saga.progress(number)
            # Past the pivot the saga only goes forward: no deadline, and a step that fails for good parks the saga.
            committed = saga.past_pivot(run.flow)
            if progress.status is StepStatus.FAILED:
                # The failure is journaled but the move out of RUNNING is not (crash in between).
                await self._failed_for_good(run, step, progress.last_error or f"{step.label} failed", committed)
                return
            if not committed and self._clock.monotonic() >= run.deadline_mono:
                await self._expire(run, step, in_flight=progress.forward_attempts > 0)
                return
            result = await self._forward_step(run, step, math.inf if committed else run.deadline_mono)
            if result.outcome is StepOutcome.WAITING:
                return
            if result.outcome is StepOutcome.EXPIRED:
                await self._expire(run, step, in_flight=True)
                return
            if result.outcome is StepOutcome.FAILED:
                await self._failed_for_good(run, step, result.message, committed)
                return
        await self._move(run, SagaState.SUCCEEDED, cause="")

    async def _failed_for_good(self, run: SagaRun, step: StepDef, cause: str, past_pivot: bool) -> None:
        """Before the pivot the saga compensates; past it, it can only wait for an operator."""
        if past_pivot:
            await self._park_forward(run, step, cause)
        else:
            await self._move(run, SagaState.COMPENSATING, cause=cause)

    async def _park_forward(self, run: SagaRun, step: StepDef, cause: str) -> None:
        """Dead-letters a saga past its pivot: a retriable step failed for good. It is never compensated (the pivot
        cannot be undone); an operator's retry resumes it forward, with a fresh budget for the step."""
        saga = run.record
        progress = saga.progress(step.number)
        note = (
            f"{step.kind} step {step.label} failed after {progress.forward_attempts} attempts; parked for an operator"
        )
        now = self._clock.now_epoch_ms()
        park = DeadLetterOpen(saga.saga_id, saga.order_id, step.number, cause, progress.forward_attempts, now)
        self._metrics.child(self._metrics.forward_parked, run.flow.name, step.label).inc()
        await self._move(run, SagaState.DEAD_LETTERED, cause=cause, note=note, extra=[park])
        logger.warning("saga dead-lettered: {}", note)

    async def _forward_step(self, run: SagaRun, step: StepDef, deadline_mono: float) -> ForwardResult:
        """deadline_mono: the saga's deadline, or inf past the pivot (a retriable step is bounded by its policy)."""
        policy = self.policies.of(run.flow, step).forward
        while True:
            progress = run.record.progress(step.number)
            if progress.open_attempt == Action.FORWARD and (spent := await self._settle(run, step, Action.FORWARD)):
                message = f"{step.label} failed after {progress.forward_attempts} attempts: {spent.summary}"
                return ForwardResult(StepOutcome.FAILED, message)
            wait_s = self._due_in_s(*progress.retry_due(Action.FORWARD))
            if self._clock.monotonic() + wait_s >= deadline_mono:
                return ForwardResult(StepOutcome.EXPIRED)
            if wait_s > 0:  # a first attempt does not yield: its intent joins the commit of the saga's creation
                await self.rest(wait_s)
            if spent := await self._out_of_budget(run, step, Action.FORWARD):
                message = f"{step.label} failed after {progress.forward_attempts} attempts: {spent.summary}"
                return ForwardResult(StepOutcome.FAILED, message)
            attempt = progress.forward_attempts + 1
            spent_before_ms = progress.forward_spent_ms
            began = self._clock.monotonic()
            at_step(step.label, "forward", attempt)
            await self._append(run, [self._event(run, EventKind.STARTED, step, Action.FORWARD, attempt)], wait=True)
            crashpoints.hit("after_intent_before_rpc")
            # Measured after the intent's commit, so that the call's own deadline is the saga's.
            remaining_s = max(deadline_mono - self._clock.monotonic(), 0.001)
            timeout_s = min(policy.attempt_timeout_ms / 1000, remaining_s)
            result = await self._call(run, step, Action.FORWARD, attempt, timeout_s)
            crashpoints.hit("after_reply_before_outcome")
            if self._clock.monotonic() >= deadline_mono:
                # The deadline ended the call (or came with its reply): its effect is unknown, so it is compensated.
                deadline = self._event(
                    run, EventKind.DEADLINE, step, Action.FORWARD, attempt, result.code.name, "saga deadline"
                )
                await self._append(run, [deadline], wait=False)
                return ForwardResult(StepOutcome.EXPIRED)
            if not result.ok and result.cls.may_have_applied:
                # Deadline, lost connection, INTERNAL: before retrying blind, ask the service what became of it.
                result = await self._ask(run, step, Action.FORWARD, attempt, result)
            if result.ok and result.in_progress:
                await self._accepted(run, step, Action.FORWARD, attempt, result)
                return ForwardResult(StepOutcome.WAITING)
            if result.ok:
                done = self._event(run, EventKind.SUCCEEDED, step, Action.FORWARD, attempt, result.code.name)
                await self._append(run, [self._with_output(run, step, done, result)], wait=False)
                return ForwardResult(StepOutcome.DONE)
            if result.cls is not CallClass.TRANSIENT:
                await self._append(run, [self._failed(run, step, Action.FORWARD, attempt, result)], wait=False)
                return ForwardResult(StepOutcome.FAILED, f"{step.label} failed: {result.summary}")
            spent_ms = spent_before_ms + self._elapsed_ms(began)
            decision = retry.decide(policy, attempt, spent_ms, self._rng)
            if not decision.retry:
                await self._append(run, [self._failed(run, step, Action.FORWARD, attempt, result)], wait=False)
                message = f"{step.label} failed after {attempt} attempts: {result.summary}"
                return ForwardResult(StepOutcome.FAILED, message)
            if self._clock.monotonic() + decision.wait_ms / 1000 >= deadline_mono:
                # Never sleep past the deadline: the saga expires now instead.
                code = result.code.name
                late = self._event(
                    run, EventKind.DEADLINE, step, Action.FORWARD, attempt, code, "retry would pass the deadline"
                )
                await self._append(run, [late], wait=False)
                return ForwardResult(StepOutcome.EXPIRED)
            await self._retrying(run, step, Action.FORWARD, attempt, result, decision)

    async def _expire(self, run: SagaRun, step: StepDef, in_flight: bool) -> None:
        saga = run.record
        ttl_ms = saga.deadline_epoch_ms - saga.created_at_epoch_ms
        where = "during" if in_flight else "before"
        self._metrics.ttl_expired.inc()
        await self._move(run, SagaState.COMPENSATING, cause=f"deadline passed {where} {step.label} (ttl {ttl_ms} ms)")

    # ---- compensation -----------------------------------------------------------------------------------------------

    async def _compensate(self, run: SagaRun) -> None:
        saga = run.record
        rejected = {step.number: self.policies.of(run.flow, step).rejected for step in run.flow.steps}
        for number in saga.to_compensate(run.flow, rejected):
            step = run.flow.step(number)
            if await self._nothing_to_undo(run, step):
                continue
            result = await self._compensate_step(run, step)
            if result.waiting:
                return
            if not result.done:
                await self._park(run, step, result)
                return
        await self._move(run, SagaState.FAILED)

    async def _park(self, run: SagaRun, step: StepDef, result: CompensationResult) -> None:
        """Dead-letters the saga: the compensation of `step` failed for good; an operator takes over."""
        saga = run.record
        note = (
            f"compensation of {step.label} failed after {result.attempts} attempts "
            f"({result.last_error}); parked for an operator"
        )
        now = self._clock.now_epoch_ms()
        park = DeadLetterOpen(saga.saga_id, saga.order_id, step.number, result.last_error, result.attempts, now)
        self._metrics.child(self._metrics.compensation_failures, run.flow.name, step.label).inc()
        await self._move(run, SagaState.DEAD_LETTERED, note=note, extra=[park])
        logger.warning("saga dead-lettered: {}", note)

    async def _nothing_to_undo(self, run: SagaRun, step: StepDef) -> bool:
        """A step whose forward outcome was unknown when it failed, not yet compensated: if the service says the call
        ended with a rejection (it applied nothing, and a late copy of it gets that same answer), the compensation is
        skipped. Any other answer compensates as before; "not found" included, because the compensation is what
        tombstones the key against a copy of the forward call still on its way (DESIGN contract 2)."""
        progress = run.record.progress(step.number)
        if not asks_first(progress, self.policies.of(run.flow, step).operations):  # the rule dry runs show, too
            return False
        answer = await self._get_operation(run, step, Action.FORWARD)
        asked = self._event(run, EventKind.ASKED, step, Action.FORWARD, progress.forward_attempts, answer.label)
        if answer.state is not OperationState.DONE or answer.result.cls is not CallClass.REJECTED:
            await self._append(run, [asked], wait=False)
            return False
        detail = f"nothing to undo: the service answered {answer.result.summary}"
        skipped = self._event(run, EventKind.SUCCEEDED, step, Action.COMPENSATE, 0, "NOT_APPLIED", detail)
        await self._append(run, [asked, skipped], wait=False)
        self._metrics.child(self._metrics.compensations_skipped, step.label).inc()
        return True

    async def _compensate_step(self, run: SagaRun, step: StepDef) -> CompensationResult:
        """Compensations are not bounded by the deadline and retry on any error, until their own policy runs out."""
        policy = self.policies.of(run.flow, step).compensate
        while True:
            progress = run.record.progress(step.number)
            if progress.open_attempt == Action.COMPENSATE and (
                spent := await self._settle(run, step, Action.COMPENSATE)
            ):
                return CompensationResult(False, progress.compensate_attempts, spent.summary)
            if (wait_s := self._due_in_s(*progress.retry_due(Action.COMPENSATE))) > 0:
                await self.rest(wait_s)
            if spent := await self._out_of_budget(run, step, Action.COMPENSATE):
                return CompensationResult(False, progress.compensate_attempts, spent.summary)
            made, spent_before_ms = progress.budget_used(Action.COMPENSATE)
            attempt = progress.compensate_attempts + 1
            began = self._clock.monotonic()
            at_step(step.label, "compensate", attempt)
            await self._append(run, [self._event(run, EventKind.STARTED, step, Action.COMPENSATE, attempt)], wait=True)
            result = await self._call(run, step, Action.COMPENSATE, attempt, policy.attempt_timeout_ms / 1000)
            crashpoints.hit("mid_compensation")
            if not result.ok and result.cls.may_have_applied:
                result = await self._ask(run, step, Action.COMPENSATE, attempt, result)
            if result.ok and result.in_progress:
                await self._accepted(run, step, Action.COMPENSATE, attempt, result)
                return CompensationResult(False, attempt, waiting=True)
            if result.ok:
                done = self._event(run, EventKind.SUCCEEDED, step, Action.COMPENSATE, attempt, result.code.name)
                await self._append(run, [done], wait=False)
                return CompensationResult(True, attempt)
            decision = retry.decide(policy, made + 1, spent_before_ms + self._elapsed_ms(began), self._rng)
            if not decision.retry:
                await self._append(run, [self._failed(run, step, Action.COMPENSATE, attempt, result)], wait=False)
                return CompensationResult(False, attempt, result.summary)
            await self._retrying(run, step, Action.COMPENSATE, attempt, result, decision)

    # ---- long-running operations and unknown outcomes ---------------------------------------------------------------

    async def _accepted(self, run: SagaRun, step: StepDef, action: Action, attempt: int, result: CallResult) -> None:
        """The service took the call and finishes it later: durable before the saga stops driving, so a restart waits
        on the same operation instead of sending the call again."""
        policy = self.policies.of(run.flow, step).operations
        wait_ms = self._poll_wait(policy, 0, result.poll_after_ms)
        detail = f"accepted; asking in {wait_ms} ms"
        event = self._event(run, EventKind.ACCEPTED, step, action, attempt, "IN_PROGRESS", detail, wait_ms)
        await self._append(run, [event], wait=True)
        self._metrics.child(self._metrics.operations_accepted, step.label, action.label).inc()
        logger.info("{} {} accepted by the service; waiting", step.label, action.label)

    async def _ask(self, run: SagaRun, step: StepDef, action: Action, attempt: int, result: CallResult) -> CallResult:
        """The outcome of an attempt that ended without a trustworthy answer, as the service tells it (GetOperation),
        journaled; the attempt's own result when the service cannot say (or asking is off)."""
        if not self.policies.of(run.flow, step).operations.ask_unknown:
            return result
        answer = await self._get_operation(run, step, action)
        asked = self._event(run, EventKind.ASKED, step, action, attempt, answer.label, result.summary)
        await self._append(run, [asked], wait=False)
        if answer.state is OperationState.DONE and (answer.result.ok or answer.result.cls is CallClass.REJECTED):
            return answer.result  # applied, or rejected for good: the service's final word
        if answer.state is OperationState.IN_PROGRESS:
            return CallResult(grpc.StatusCode.OK, in_progress=True, poll_after_ms=answer.poll_after_ms)
        if answer.state is OperationState.NOT_FOUND and result.code in RETRY_IF_NOT_APPLIED:
            # INTERNAL, UNKNOWN, CANCELLED alone would fail the step and compensate it; the service says it applied
            # nothing, so the call goes again with the same key (a copy still on its way is the same call).
            return dataclasses.replace(result, not_applied=True)
        # Not found after a transient error (retried anyway), unknown, or an answer recorded as an error of the call
        # itself (CANCELLED, UNAVAILABLE, ...; no verdict on the request): as if not asked.
        return result

    async def _get_operation(self, run: SagaRun, step: StepDef, action: Action) -> OperationAnswer:
        """One GetOperation, bounded by the step's attempt timeout (and traced); a failure to ask is UNKNOWN."""
        timeout_s = self._policy(run, step, action).attempt_timeout_ms / 1000
        if run.trace is None:
            answer = await self._ask_service(run, step, action, timeout_s)
        else:
            name, fields = _span_of(step.call.service, step.id, action, "GetOperation")
            with run.trace.span(name, fields, client=True) as span:
                answer = await self._ask_service(run, step, action, timeout_s)
                span.set_attribute("saga.operation", answer.label)
        self._metrics.child(self._metrics.operation_answers, step.label, action.label, answer.verdict).inc()
        return answer

    async def _ask_service(self, run: SagaRun, step: StepDef, action: Action, timeout_s: float) -> OperationAnswer:
        try:
            return await self._caller.get_operation(run.values, step, action, timeout_s)
        except Exception as e:
            return OperationAnswer(OperationState.UNKNOWN, CallResult.failed_to_call(e))

    def _poll_wait(self, policy: OperationPolicy, polls: int, suggested_ms: int) -> int:
        """The wait before the next poll: the service's suggestion, else poll_min_ms doubling per poll; within the
        policy's bounds, with up to a fifth added at random so that operations accepted together spread out."""
        base = suggested_ms if suggested_ms > 0 else policy.poll_min_ms * 2 ** min(polls, 30)
        bounded = min(max(base, policy.poll_min_ms), policy.poll_max_ms)
        return bounded + int(self._rng.random() * bounded / 5)

    async def poll(self, run: SagaRun) -> int | None:
        """Asks the service about the saga's waiting operation. Returns when to ask next (epoch ms) while it is in
        progress, or None once the saga should be driven on (done, failed, past its limit, to be sent again)."""
        saga = run.record
        waiting = saga.waiting_on()
        if waiting is None:
            return None
        number, action = waiting
        step = run.flow.step(number)
        progress = saga.progress(number)
        policy = self.policies.of(run.flow, step).operations
        fields = {"trace_id": run.trace_id} if run.trace_id else {}
        with saga_context(saga.saga_id, saga.order_id, step=step.label, action=action.label, **fields):
            answer = await self._get_operation(run, step, action)
            attempt = progress.attempts(action)
            now = self._clock.now_epoch_ms()
            if answer.state is OperationState.DONE:
                await self._operation_done(run, step, action, attempt, answer.result)
                return None
            if answer.state is OperationState.NOT_FOUND:
                # It accepted the call, and now has no record of it: send it again (the same key).
                note = "the service has no record of the accepted call; sending it again"
                await self._append(
                    run, [self._event(run, EventKind.RETRYING, step, action, attempt, "NOT_FOUND", note)], wait=False
                )
                return None
            age_ms = now - progress.accepted_at_epoch_ms
            if (
                action is Action.FORWARD
                and not saga.past_pivot(run.flow)
                and self._clock.monotonic() >= run.deadline_mono
            ):
                late = self._event(run, EventKind.DEADLINE, step, action, attempt, "DEADLINE_EXCEEDED", "saga deadline")
                await self._append(run, [late], wait=False)
                await self._expire(run, step, in_flight=True)
                return None
            limit_ms = policy.forward_max_ms if action is Action.FORWARD else policy.compensate_max_ms
            if age_ms >= limit_ms:
                message = f"still in progress after {age_ms} ms (limit {limit_ms} ms)"
                failed = self._event(run, EventKind.FAILED, step, action, attempt, "DEADLINE_EXCEEDED", message)
                await self._append(run, [failed], wait=False)
                self._metrics.child(self._metrics.operations_timed_out, step.label, action.label).inc()
                if action is Action.COMPENSATE:
                    await self._park(run, step, CompensationResult(False, attempt, f"DEADLINE_EXCEEDED: {message}"))
                return None
            if answer.state is OperationState.IN_PROGRESS:
                wait_ms = self._poll_wait(policy, progress.polls + 1, answer.poll_after_ms)
                polled = self._event(run, EventKind.POLLED, step, action, attempt, "IN_PROGRESS", "", wait_ms)
                await self._append(run, [polled], wait=False)
                return now + wait_ms
            # The service could not say (unreachable, no GetOperation): ask again later, or past the heartbeat
            # deadline send the call again, as a fresh attempt with the same key.
            silent_ms = now - progress.heard_at_epoch_ms
            if silent_ms >= policy.heartbeat_ms:
                note = f"no word on the operation for {silent_ms} ms ({answer.result.summary}); sending it again"
                retry_event = self._event(run, EventKind.RETRYING, step, action, attempt, answer.result.code.name, note)
                await self._append(run, [retry_event], wait=False)
                return None
            return now + self._poll_wait(policy, progress.polls + 1, 0)

    async def _operation_done(
        self, run: SagaRun, step: StepDef, action: Action, attempt: int, result: CallResult
    ) -> None:
        """Journals how a waited-on call ended; the saga is then driven on from there."""
        age_ms = self._clock.now_epoch_ms() - run.record.progress(step.number).accepted_at_epoch_ms
        self._metrics.child(self._metrics.operation_duration, step.label, action.label).observe(age_ms / 1000)
        if result.ok:
            done = self._event(run, EventKind.SUCCEEDED, step, action, attempt, "OK", f"done after {age_ms} ms")
            if action is Action.FORWARD:
                done = self._with_output(run, step, done, result)
            await self._append(run, [done], wait=False)
        elif action is Action.FORWARD:
            await self._append(run, [self._failed(run, step, action, attempt, result)], wait=False)
        else:
            # A compensation that ended in an error: retried like any failed compensation attempt, by its policy.
            made, spent_ms = run.record.progress(step.number).budget_used(Action.COMPENSATE)
            decision = retry.decide(self.policies.of(run.flow, step).compensate, made, spent_ms, self._rng)
            if decision.retry:
                await self._retrying(run, step, action, attempt, result, decision)
            else:
                await self._append(run, [self._failed(run, step, action, attempt, result)], wait=False)
                await self._park(run, step, CompensationResult(False, attempt, result.summary))

    # ---- the budget ---------------------------------------------------------------------------------------------

    def _policy(self, run: SagaRun, step: StepDef, action: Action) -> RetryPolicy:
        policies = self.policies.of(run.flow, step)
        return policies.forward if action is Action.FORWARD else policies.compensate

    async def _settle(self, run: SagaRun, step: StepDef, action: Action) -> CallResult | None:
        """An attempt journaled as started whose outcome a crash (or a stop) left unknown is spent (DESIGN contract
        11): its call time counts, at most its timeout, and the next attempt waits a backoff and passes the budget
        check like any retry. Journals its RETRYING (then returns None) or, with the budget gone, its failure (returns
        the result the step failed with)."""
        progress = run.record.progress(step.number)
        policy = self._policy(run, step, action)
        made, spent_ms = progress.budget_used(action)
        ran_ms = self._clock.now_epoch_ms() - progress.attempt_started_at_epoch_ms
        spent_ms += min(max(ran_ms, 0), policy.attempt_timeout_ms)
        attempt = progress.attempts(action)
        result = CallResult(grpc.StatusCode.UNKNOWN, "outcome unknown: the shard stopped during the attempt")
        decision = retry.decide(policy, made, spent_ms, self._rng)
        if decision.retry:
            await self._retrying(run, step, action, attempt, result, decision)
            return None
        await self._append(run, [self._failed(run, step, action, attempt, result)], wait=False)
        return result

    async def _out_of_budget(self, run: SagaRun, step: StepDef, action: Action) -> CallResult | None:
        """Checked before every send: journals the step's failure and returns its result when the policy has no
        attempt left; None otherwise. A retry the engine drew always fits; a re-send asked for without a backoff (a
        long-running operation the service lost, or stopped answering about) may not."""
        made, spent_ms = run.record.progress(step.number).budget_used(action)
        if made == 0 or retry.allows(self._policy(run, step, action), made, spent_ms):
            return None
        result = CallResult(grpc.StatusCode.UNKNOWN, f"retry budget spent ({made} attempts, {spent_ms} ms)")
        attempt = run.record.progress(step.number).attempts(action)
        await self._append(run, [self._failed(run, step, action, attempt, result)], wait=False)
        return result

    # ---- plumbing -------------------------------------------------------------------------------------------------

    async def rest(self, seconds: float) -> None:
        """A retry's backoff (or the shard's pause before re-driving a saga): the journal's commit window does not
        wait for a resting saga, including a window already open."""
        with self._journal.window.resting():
            await self._clock.sleep(seconds)

    def _due_in_s(self, due_at_epoch_ms: int, wait_ms: int) -> float:
        return retry.remaining_wait_s(due_at_epoch_ms, wait_ms, self._clock.now_epoch_ms())

    def _elapsed_ms(self, began_mono: float) -> int:
        return round((self._clock.monotonic() - began_mono) * 1000)

    async def _retrying(
        self,
        run: SagaRun,
        step: StepDef,
        action: Action,
        attempt: int,
        result: CallResult,
        decision: retry.RetryDecision,
    ) -> None:
        """Journals the failed attempt with the wait it drew (the next attempt's due time); the caller's loop then
        waits until that time, as a restarted shard would."""
        code = result.code.name
        event = self._event(
            run, EventKind.RETRYING, step, action, attempt, code, result.note, decision.wait_ms, decision.spent_ms
        )
        await self._append(run, [event], wait=False)
        self._metrics.child(self._metrics.step_retries, run.flow.name, step.label, action.label, code).inc()
        logger.debug(
            "{} {} attempt {} got {}; next in {} ms", step.label, action.label, attempt, code, decision.wait_ms
        )

    @staticmethod
    def _with_output(run: SagaRun, step: StepDef, done: Event, result: CallResult) -> Event:
        """A forward step's success, carrying its response when a later request reads it (journaled with it, so a
        restarted shard builds the same requests)."""
        if not step.output_used or result.response is None:
            return done
        run.values.outputs[step.number] = result.response
        return dataclasses.replace(done, output=result.response.SerializeToString(deterministic=True))

    def _failed(self, run: SagaRun, step: StepDef, action: Action, attempt: int, result: CallResult) -> Event:
        return self._event(run, EventKind.FAILED, step, action, attempt, result.code.name, result.note)

    async def _call(self, run: SagaRun, step: StepDef, action: Action, attempt: int, timeout_s: float) -> CallResult:
        """One attempt, measured (and traced when tracing is on). It ends within timeout_s (the Caller's contract); an
        exception from the caller (a bug or a broken channel) must not kill the saga, so it counts as transient."""
        started = time.perf_counter()
        if run.trace is not None:
            result = await self._traced_call(run, step, action, attempt, timeout_s)
        else:
            try:
                result = await self._caller.call(run.values, step, action, timeout_s)
            except Exception as e:
                result = CallResult.failed_to_call(e)
        elapsed_s = time.perf_counter() - started
        if not result.ok and (classes := self.policies.of(run.flow, step).classes) is not None:
            result = dataclasses.replace(result, classes=classes)
        metrics = self._metrics
        metrics.child(metrics.step_duration, run.flow.name, step.label, action.label).observe(elapsed_s)
        metrics.child(metrics.step_attempts, run.flow.name, step.label, action.label, result.code.name).inc()
        logger.debug("{} {} -> {} in {:.1f} ms", step.label, action.label, result.code.name, elapsed_s * 1e3)
        return result

    async def _traced_call(
        self, run: SagaRun, step: StepDef, action: Action, attempt: int, timeout_s: float
    ) -> CallResult:
        """The attempt as the span of its call ("forward process_payment", kind CLIENT), under the saga's trace; the
        caller puts its context in the call's metadata, so the service's own span is its child."""
        call = step.call if action is Action.FORWARD else step.compensation
        assert call is not None
        name, fields = _span_of(call.service, step.id, action, call.path.rpartition("/")[2])
        with run.trace.span(name, {**fields, "saga.attempt": attempt}, client=True) as span:
            try:
                result = await self._caller.call(run.values, step, action, timeout_s)
            except Exception as e:
                result = CallResult.failed_to_call(e)
            tracing.outcome(span, result.code.name, result.ok)
        return result

    def _event(
        self,
        run: SagaRun,
        kind: EventKind,
        step: StepDef,
        action: Action,
        attempt: int,
        code: str = "",
        detail: str = "",
        wait_ms: int = 0,
        spent_ms: int = 0,
    ) -> Event:
        saga = run.record
        event = Event(
            saga_id=saga.saga_id,
            seq=saga.next_seq,
            at_epoch_ms=self._clock.now_epoch_ms(),
            kind=kind,
            state=saga.state,
            step=step.number,
            action=int(action),
            attempt=attempt,
            code=code,
            detail=detail,
            wait_ms=wait_ms,
            spent_ms=spent_ms,
        )
        saga.next_seq += 1
        return event

    async def _move(
        self,
        run: SagaRun,
        new: SagaState,
        cause: str | None = None,
        note: str = "",
        extra: Sequence[Record] = (),
    ) -> None:
        if run.trace is not None:
            # The shard knows here whether the saga went wrong: if so its trace is exported whatever the sampler said
            # (the spans held so far with it); a success forgets what it held.
            if new is SagaState.SUCCEEDED:
                run.trace.drop()
            elif new is not SagaState.RUNNING:
                run.trace.keep(new.name)
            run.trace.moved(new.name)
        await transitions.move(
            run.record,
            new,
            self._clock.now_epoch_ms(),
            lambda records: self._append(run, records, wait=True),
            self._metrics,
            cause=cause,
            note=note,
            extra=extra,
        )
        # A success is routine: DEBUG (metrics count them, the journal keeps each). What needs a look is INFO. One
        # INFO line a saga cost the shard about 5% of its CPU at 300 sagas/s.
        log = logger.debug if new is SagaState.SUCCEEDED else logger.info
        log("saga {} {}", new.name, run.record.message)

    async def _append(self, run: SagaRun, records: Sequence[Record], wait: bool) -> None:
        """Applies the records' events to the working record now, to the durable view once committed."""
        for record in records:
            if isinstance(record, Event):
                run.record.apply(record)
        fut = self._journal.submit(records, ends_round=wait)

        def committed(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                run.write_error = run.write_error or (f.exception() or asyncio.CancelledError())
                return
            for record in records:
                if isinstance(record, Event):
                    run.view.apply(record)
                    for listener in list(run.listeners):
                        listener(record, run.view)

        fut.add_done_callback(committed)
        if wait:
            await asyncio.shield(fut)
            if run.created is not None:
                # A new saga is driven while its creation commits. Commits keep submission order, so by now the
                # creation is settled; if it failed, nothing of this saga may go out (it was never acknowledged).
                await asyncio.shield(run.created)
                run.created = None  # durable: later appends (and PlaceOrder joiners) need not wait for it again
        if run.write_error is not None:
            # Something this saga wrote did not reach the disk: stop; the shard re-drives it from the journal.
            raise run.write_error
