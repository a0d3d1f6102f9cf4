"""Runs one saga from wherever its journal says it stands to SUCCEEDED, FAILED or DEAD_LETTERED.

Write-ahead (DESIGN contract 1): "step k, attempt n, started" is durable before the RPC leaves; the outcome is queued
right after the reply and committed together with the next intent (or the terminal state), so it is durable before the
next step starts, at one commit per step. Retries follow the durable schedule of retry.py: the budget (attempts and
retry time) and the due time of the next attempt come from the journal, so a restart neither resets the budget nor
fires the next attempt early. Forward retries are also bounded by the saga deadline; compensations are not.

Every call ends by itself: the Caller gives each attempt its timeout (forward: never past the saga deadline), as gRPC
deadlines do, so the engine never races a call against a timer of its own.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from common import tracing

from . import crashpoints, retry, transitions
from .caller import Caller, SagaPayload
from .clock import Clock
from .config import ShardConfig
from .errors import CallClass, CallResult
from .journal import DeadLetterOpen, Journal, Record
from .logs import at_step, saga_context
from .metrics import ShardMetrics
from .model import Action, SagaState, Step, StepStatus
from .saga import Event, EventKind, SagaRecord


class StepOutcome(enum.Enum):
    """How a forward step ended."""

    DONE = "done"
    FAILED = "failed"  # for good: compensate
    EXPIRED = "expired"  # the saga deadline passed: compensate, this step included


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


@dataclass(eq=False)
class SagaRun:
    """A saga being driven: the engine's working record (ahead of the disk by at most the uncommitted tail) and the
    durable view that readers see (only events already committed are folded into it)."""

    record: SagaRecord
    payload: SagaPayload
    deadline_mono: float
    view: SagaRecord
    done: asyncio.Future[None]
    listeners: list[Callable[[Event, SagaRecord], None]] = field(default_factory=list)
    created: asyncio.Future[None] | None = None
    """Resolves once the saga's creation is durable (None for a saga loaded from the journal)."""
    write_error: BaseException | None = None
    task: asyncio.Task[None] | None = None
    trace_parent: Any = None
    """The context its spans hang under (common.tracing.restore of the journaled one); None with tracing off."""
    trace_id: str = ""
    resumed: bool = False
    """Loaded from the journal (a restart, a failover) rather than created by this process: marked on its spans."""


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
        self._journal = journal
        self._caller = caller
        self._clock = clock
        self._rng = rng

    async def drive(self, run: SagaRun) -> None:
        """Moves the saga on until it is terminal or parked. Cancelling it is safe: the journal holds where it was."""
        saga = run.record
        fields = {"trace_id": run.trace_id} if run.trace_id else {}
        with saga_context(saga.saga_id, saga.order_id, **fields):
            if saga.state is SagaState.RUNNING:
                await self._forward(run)
            if saga.state is SagaState.COMPENSATING:
                await self._compensate(run)

    # ---- forward --------------------------------------------------------------------------------------------------

    async def _forward(self, run: SagaRun) -> None:
        saga = run.record
        while (step := saga.next_forward()) is not None:
            progress = saga.steps[step]
            if progress.status is StepStatus.FAILED:
                # The failure is journaled but the move to COMPENSATING is not (crash in between).
                await self._move(run, SagaState.COMPENSATING, cause=progress.last_error or f"{step.label} failed")
                return
            if self._clock.monotonic() >= run.deadline_mono:
                await self._expire(run, step, in_flight=progress.forward_attempts > 0)
                return
            result = await self._forward_step(run, step)
            if result.outcome is StepOutcome.EXPIRED:
                await self._expire(run, step, in_flight=True)
                return
            if result.outcome is StepOutcome.FAILED:
                await self._move(run, SagaState.COMPENSATING, cause=result.message)
                return
        await self._move(run, SagaState.SUCCEEDED, cause="")

    async def _forward_step(self, run: SagaRun, step: Step) -> ForwardResult:
        policy = self._cfg.forward
        while True:
            progress = run.record.steps[step]
            wait_s = self._due_in_s(*progress.retry_due(Action.FORWARD))
            if self._clock.monotonic() + wait_s >= run.deadline_mono:
                return ForwardResult(StepOutcome.EXPIRED)
            await self._clock.sleep(wait_s)
            attempt = progress.forward_attempts + 1
            spent_before_ms = progress.forward_spent_ms
            began = self._clock.monotonic()
            at_step(step.label, "forward", attempt)
            await self._append(run, [self._event(run, EventKind.STARTED, step, Action.FORWARD, attempt)], wait=True)
            crashpoints.hit("after_intent_before_rpc")
            # Measured after the intent's commit, so that the call's own deadline is the saga's.
            remaining_s = max(run.deadline_mono - self._clock.monotonic(), 0.001)
            timeout_s = min(policy.attempt_timeout_ms / 1000, remaining_s)
            result = await self._call(run, step, Action.FORWARD, attempt, timeout_s)
            crashpoints.hit("after_reply_before_outcome")
            if self._clock.monotonic() >= run.deadline_mono:
                # The deadline ended the call (or came with its reply): its effect is unknown, so it is compensated.
                deadline = self._event(
                    run, EventKind.DEADLINE, step, Action.FORWARD, attempt, result.code.name, "saga deadline"
                )
                await self._append(run, [deadline], wait=False)
                return ForwardResult(StepOutcome.EXPIRED)
            if result.ok:
                done = self._event(run, EventKind.SUCCEEDED, step, Action.FORWARD, attempt, result.code.name)
                await self._append(run, [done], wait=False)
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
            if self._clock.monotonic() + decision.wait_ms / 1000 >= run.deadline_mono:
                # Never sleep past the deadline: the saga expires now instead.
                code = result.code.name
                late = self._event(
                    run, EventKind.DEADLINE, step, Action.FORWARD, attempt, code, "retry would pass the deadline"
                )
                await self._append(run, [late], wait=False)
                return ForwardResult(StepOutcome.EXPIRED)
            await self._retrying(run, step, Action.FORWARD, attempt, result, decision)

    async def _expire(self, run: SagaRun, step: Step, in_flight: bool) -> None:
        saga = run.record
        ttl_ms = saga.deadline_epoch_ms - saga.created_at_epoch_ms
        where = "during" if in_flight else "before"
        self._metrics.ttl_expired.inc()
        await self._move(run, SagaState.COMPENSATING, cause=f"deadline passed {where} {step.label} (ttl {ttl_ms} ms)")

    # ---- compensation -----------------------------------------------------------------------------------------------

    async def _compensate(self, run: SagaRun) -> None:
        saga = run.record
        for step in saga.to_compensate():
            result = await self._compensate_step(run, step)
            if not result.done:
                note = (
                    f"compensation of {step.label} failed after {result.attempts} attempts "
                    f"({result.last_error}); parked for an operator"
                )
                now = self._clock.now_epoch_ms()
                park = DeadLetterOpen(saga.saga_id, saga.order_id, int(step), result.last_error, result.attempts, now)
                self._metrics.child(self._metrics.compensation_failures, step.label).inc()
                await self._move(run, SagaState.DEAD_LETTERED, note=note, extra=[park])
                logger.warning("saga dead-lettered: {}", note)
                return
        await self._move(run, SagaState.FAILED)

    async def _compensate_step(self, run: SagaRun, step: Step) -> CompensationResult:
        """Compensations are not bounded by the deadline and retry on any error, until their own policy runs out."""
        policy = self._cfg.compensate
        while True:
            progress = run.record.steps[step]
            await self._clock.sleep(self._due_in_s(*progress.retry_due(Action.COMPENSATE)))
            made, spent_before_ms = progress.budget_used(Action.COMPENSATE)
            attempt = progress.compensate_attempts + 1
            began = self._clock.monotonic()
            at_step(step.label, "compensate", attempt)
            await self._append(run, [self._event(run, EventKind.STARTED, step, Action.COMPENSATE, attempt)], wait=True)
            result = await self._call(run, step, Action.COMPENSATE, attempt, policy.attempt_timeout_ms / 1000)
            crashpoints.hit("mid_compensation")
            if result.ok:
                done = self._event(run, EventKind.SUCCEEDED, step, Action.COMPENSATE, attempt, result.code.name)
                await self._append(run, [done], wait=False)
                return CompensationResult(True, attempt)
            decision = retry.decide(policy, made + 1, spent_before_ms + self._elapsed_ms(began), self._rng)
            if not decision.retry:
                await self._append(run, [self._failed(run, step, Action.COMPENSATE, attempt, result)], wait=False)
                return CompensationResult(False, attempt, result.summary)
            await self._retrying(run, step, Action.COMPENSATE, attempt, result, decision)

    # ---- plumbing -------------------------------------------------------------------------------------------------

    def _due_in_s(self, due_at_epoch_ms: int, wait_ms: int) -> float:
        return retry.remaining_wait_s(due_at_epoch_ms, wait_ms, self._clock.now_epoch_ms())

    def _elapsed_ms(self, began_mono: float) -> int:
        return round((self._clock.monotonic() - began_mono) * 1000)

    async def _retrying(
        self, run: SagaRun, step: Step, action: Action, attempt: int, result: CallResult, decision: retry.RetryDecision
    ) -> None:
        """Journals the failed attempt with the wait it drew (the next attempt's due time); the caller's loop then
        waits until that time, as a restarted shard would."""
        code = result.code.name
        event = self._event(
            run, EventKind.RETRYING, step, action, attempt, code, result.summary, decision.wait_ms, decision.spent_ms
        )
        await self._append(run, [event], wait=False)
        self._metrics.child(self._metrics.step_retries, step.label, action.label, code).inc()
        logger.debug(
            "{} {} attempt {} got {}; next in {} ms", step.label, action.label, attempt, code, decision.wait_ms
        )

    def _failed(self, run: SagaRun, step: Step, action: Action, attempt: int, result: CallResult) -> Event:
        return self._event(run, EventKind.FAILED, step, action, attempt, result.code.name, result.summary)

    async def _call(self, run: SagaRun, step: Step, action: Action, attempt: int, timeout_s: float) -> CallResult:
        """One attempt, measured (and traced when tracing is on). It ends within timeout_s (the Caller's contract); an
        exception from the caller (a bug or a broken channel) must not kill the saga, so it counts as transient."""
        started = time.perf_counter()
        if run.trace_parent is not None:
            result = await self._traced_call(run, step, action, attempt, timeout_s)
        else:
            try:
                result = await self._caller.call(run.payload, step, action, timeout_s)
            except Exception as e:
                result = CallResult.failed_to_call(e)
        elapsed_s = time.perf_counter() - started
        metrics = self._metrics
        metrics.child(metrics.step_duration, step.label, action.label).observe(elapsed_s)
        metrics.child(metrics.step_attempts, step.label, action.label, result.code.name).inc()
        logger.debug("{} {} -> {} in {:.1f} ms", step.label, action.label, result.code.name, elapsed_s * 1e3)
        return result

    async def _traced_call(
        self, run: SagaRun, step: Step, action: Action, attempt: int, timeout_s: float
    ) -> CallResult:
        """The attempt inside its span ("forward process_payment"), under the saga's trace; the instrumented channel
        makes the call to the service a child of it, and the service's own span a child of that."""
        fields = {
            **self._span_fields(run),
            "saga.step": step.label,
            "saga.action": action.label,
            "saga.attempt": attempt,
        }
        with tracing.span(f"{action.label} {step.label}", run.trace_parent, fields) as span:
            try:
                result = await self._caller.call(run.payload, step, action, timeout_s)
            except Exception as e:
                result = CallResult.failed_to_call(e)
            tracing.outcome(span, result.code.name, result.ok)
        return result

    def _span_fields(self, run: SagaRun) -> dict[str, Any]:
        """What every span of this saga says about it: identifiers only, never payment data."""
        saga = run.record
        fields: dict[str, Any] = {
            "saga.id": saga.saga_id,
            "saga.order_id": saga.order_id,
            "saga.shard": self._cfg.shard_id,
        }
        if run.resumed:
            fields["saga.resumed"] = True
        return fields

    def _event(
        self,
        run: SagaRun,
        kind: EventKind,
        step: Step,
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
            step=int(step),
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
        if run.trace_parent is not None:
            fields = {**self._span_fields(run), "saga.state": new.name}
            with tracing.span(f"saga {new.name}", run.trace_parent, fields):
                pass
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
        logger.info("saga {} {}", new.name, run.record.message)

    async def _append(self, run: SagaRun, records: Sequence[Record], wait: bool) -> None:
        """Applies the records' events to the working record now, to the durable view once committed."""
        for record in records:
            if isinstance(record, Event):
                run.record.apply(record)
        fut = self._journal.submit(records)

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
