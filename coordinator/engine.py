"""Runs one saga from wherever its journal says it stands to SUCCEEDED, FAILED or DEAD_LETTERED.

Write-ahead (DESIGN contract 1): "step k, attempt n, started" is durable before the RPC leaves; the outcome is queued
right after the reply and committed together with the next intent (or the terminal state), so it is durable before the
next step starts, at one commit per step. Retries follow exponential backoff with full jitter (the `backoff` package's
schedule, our seeded Random for the jitter), bounded by attempts and, going forward, by the saga deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import backoff
import grpc
from loguru import logger

from . import crashpoints
from .caller import Caller, SagaPayload
from .clock import Clock
from .config import RetryPolicy, ShardConfig
from .errors import CallClass, CallResult
from .journal import DeadLetterOpen, Journal, Record, StateChange
from .logs import at_step, saga_context
from .metrics import ShardMetrics
from .model import Action, SagaState, Step, check_transition
from .saga import DEADLINE, FAILED, RETRYING, STARTED, STATE, SUCCEEDED, Event, SagaRecord

# How a forward step ended.
_OK = "ok"
_PARKED = "; parked for an operator"
_FAILED = "failed"
_EXPIRED = "expired"


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
        rec = run.record
        with saga_context(rec.saga_id, rec.order_id):
            if rec.state is SagaState.RUNNING:
                await self._forward(run)
            if rec.state is SagaState.COMPENSATING:
                await self._compensate(run)

    # ---- forward --------------------------------------------------------------------------------------------------

    async def _forward(self, run: SagaRun) -> None:
        rec = run.record
        while (step := rec.next_forward()) is not None:
            progress = rec.steps[step]
            if progress.forward_code and progress.forward_code != "OK":
                # The failure is journaled but the move to COMPENSATING is not (crash in between).
                await self._transition(run, SagaState.COMPENSATING, progress.last_error or f"{step.label} failed")
                return
            if self._clock.monotonic() >= run.deadline_mono:
                await self._expire(run, step, in_flight=progress.forward_attempts > 0)
                return
            outcome, message = await self._forward_step(run, step)
            if outcome == _EXPIRED:
                await self._expire(run, step, in_flight=True)
                return
            if outcome == _FAILED:
                await self._transition(run, SagaState.COMPENSATING, message)
                return
        await self._transition(run, SagaState.SUCCEEDED, "")

    async def _forward_step(self, run: SagaRun, step: Step) -> tuple[str, str]:
        policy = self._cfg.forward
        waits = _schedule(policy)
        attempt = run.record.steps[step].forward_attempts
        made = 0
        while True:
            attempt += 1
            made += 1
            remaining = run.deadline_mono - self._clock.monotonic()
            if remaining <= 0:
                return _EXPIRED, ""
            at_step(step.label, "forward", attempt)
            await self._append(run, [self._event(run, STARTED, step, Action.FORWARD, attempt)], wait=True)
            crashpoints.hit("after_intent_before_rpc")
            # Measured after the intent's commit, so that the call's own deadline is the saga's.
            remaining = max(run.deadline_mono - self._clock.monotonic(), 0.001)
            result = await self._call(run, step, Action.FORWARD, min(policy.attempt_timeout_ms / 1000, remaining))
            crashpoints.hit("after_reply_before_outcome")
            if result is None or self._clock.monotonic() >= run.deadline_mono:
                # The deadline ended the call: its effect is unknown, so the step will be compensated.
                ev = self._event(run, DEADLINE, step, Action.FORWARD, attempt, "DEADLINE_EXCEEDED", "saga deadline")
                await self._append(run, [ev], wait=False)
                return _EXPIRED, ""
            code = result.code.name
            if result.ok:
                await self._append(run, [self._event(run, SUCCEEDED, step, Action.FORWARD, attempt, code)], wait=False)
                return _OK, ""
            detail = result.message or code
            if result.cls is CallClass.TRANSIENT and made < policy.max_attempts:
                delay = self._rng.uniform(0, next(waits))
                if self._clock.monotonic() + delay < run.deadline_mono:
                    ev = self._event(run, RETRYING, step, Action.FORWARD, attempt, code, detail)
                    await self._append(run, [ev], wait=False)
                    self._metrics.child(self._metrics.step_retries, step.label, "forward", code).inc()
                    logger.debug(
                        "step {} attempt {} got {}; retrying in {:.0f} ms", step.label, attempt, code, delay * 1e3
                    )
                    await self._clock.sleep(delay)
                    continue
                # Never sleep past the deadline: the saga expires now instead.
                ev = self._event(run, DEADLINE, step, Action.FORWARD, attempt, code, "retry would pass the deadline")
                await self._append(run, [ev], wait=False)
                return _EXPIRED, ""
            ev = self._event(run, FAILED, step, Action.FORWARD, attempt, code, detail)
            await self._append(run, [ev], wait=False)
            if result.cls is CallClass.TRANSIENT:
                return _FAILED, f"{step.label} failed after {made} attempts: {detail}"
            return _FAILED, f"{step.label} failed: {detail}"

    async def _expire(self, run: SagaRun, step: Step, in_flight: bool) -> None:
        ttl_ms = run.record.deadline_epoch_ms - run.record.created_at_epoch_ms
        where = "during" if in_flight else "before"
        self._metrics.ttl_expired.inc()
        await self._transition(run, SagaState.COMPENSATING, f"deadline passed {where} {step.label} (ttl {ttl_ms} ms)")

    # ---- compensation -----------------------------------------------------------------------------------------------

    async def _compensate(self, run: SagaRun) -> None:
        rec = run.record
        for step in rec.to_compensate():
            ok, attempts, last = await self._compensate_step(run, step)
            if not ok:
                reason = f"compensation of {step.label} failed after {attempts} attempts ({last}){_PARKED}"
                message = f"{rec.last_error}; {reason}" if rec.last_error else reason
                park = DeadLetterOpen(rec.saga_id, rec.order_id, int(step), last, attempts, self._clock.now_epoch_ms())
                self._metrics.child(self._metrics.compensation_failures, step.label).inc()
                await self._transition(run, SagaState.DEAD_LETTERED, message, extra=[park])
                logger.warning("saga dead-lettered: {}", reason)
                return
        await self._transition(run, SagaState.FAILED, rec.last_error)

    @staticmethod
    def failure_cause(last_error: str) -> str:
        """The saga's own failure without the dead-letter note _compensate appended: what it says once retried."""
        if not last_error.endswith(_PARKED):
            return last_error
        cause, sep, _ = last_error.rpartition("; compensation of ")
        return cause if sep else ""

    async def _compensate_step(self, run: SagaRun, step: Step) -> tuple[bool, int, str]:
        """Compensations are not bounded by the deadline and retry on any error, until their own policy runs out."""
        policy = self._cfg.compensate
        waits = _schedule(policy)
        attempt = run.record.steps[step].compensate_attempts
        last = ""
        for made in range(1, policy.max_attempts + 1):
            attempt += 1
            at_step(step.label, "compensate", attempt)
            await self._append(run, [self._event(run, STARTED, step, Action.COMPENSATE, attempt)], wait=True)
            result = await self._call(run, step, Action.COMPENSATE, policy.attempt_timeout_ms / 1000)
            crashpoints.hit("mid_compensation")
            assert result is not None
            code = result.code.name
            if result.ok:
                ev = self._event(run, SUCCEEDED, step, Action.COMPENSATE, attempt, code)
                await self._append(run, [ev], wait=False)
                return True, made, ""
            last = f"{code}: {result.message}" if result.message else code
            if made < policy.max_attempts:
                ev = self._event(run, RETRYING, step, Action.COMPENSATE, attempt, code, last)
                await self._append(run, [ev], wait=False)
                self._metrics.child(self._metrics.step_retries, step.label, "compensate", code).inc()
                await self._clock.sleep(self._rng.uniform(0, next(waits)))
        ev = self._event(run, FAILED, step, Action.COMPENSATE, attempt, last.partition(":")[0], last)
        await self._append(run, [ev], wait=False)
        return False, policy.max_attempts, last

    # ---- plumbing -------------------------------------------------------------------------------------------------

    async def _call(self, run: SagaRun, step: Step, action: Action, timeout_s: float) -> CallResult | None:
        """One attempt, measured. Forward calls race the saga deadline (None: the deadline won); compensations do
        not."""
        started = time.perf_counter()
        result = await self._attempt(run, step, action, timeout_s)
        elapsed_s = time.perf_counter() - started
        m = self._metrics
        m.child(m.step_duration, step.label, action.label).observe(elapsed_s)
        code = result.code.name if result is not None else "DEADLINE_EXCEEDED"
        m.child(m.step_attempts, step.label, action.label, code).inc()
        logger.debug("{} {} -> {} in {:.1f} ms", step.label, action.label, code, elapsed_s * 1e3)
        return result

    async def _attempt(self, run: SagaRun, step: Step, action: Action, timeout_s: float) -> CallResult | None:
        call = self._caller.call(run.payload, step, action, timeout_s)
        if action is Action.COMPENSATE or self._clock.ends_rpcs:
            # Compensations are not bound by the deadline; forward calls on the real clock already carry it as their
            # gRPC timeout (_forward_step), so racing them against a timer would only cost two tasks per attempt.
            try:
                return await call
            except Exception as e:  # a bug or a broken channel must not kill the saga: treat as transient
                return CallResult(grpc.StatusCode.UNAVAILABLE, f"call failed: {e!r}")
        call_task = asyncio.ensure_future(call)
        timer = asyncio.ensure_future(self._clock.sleep(run.deadline_mono - self._clock.monotonic()))
        try:
            await asyncio.wait((call_task, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not call_task.done():
                call_task.cancel()
                # Wait for the cancelled call to unwind (without raising), so nothing of it outlives the attempt.
                await asyncio.wait((call_task,))
        if call_task.cancelled():
            return None
        exc = call_task.exception()
        if exc is not None:
            return CallResult(grpc.StatusCode.UNAVAILABLE, f"call failed: {exc!r}")
        return call_task.result()

    def _event(
        self,
        run: SagaRun,
        kind: str,
        step: Step | None = None,
        action: Action | None = None,
        attempt: int = 0,
        code: str = "",
        detail: str = "",
        state: SagaState | None = None,
    ) -> Event:
        rec = run.record
        ev = Event(
            saga_id=rec.saga_id,
            seq=rec.next_seq,
            at_epoch_ms=self._clock.now_epoch_ms(),
            kind=kind,
            state=state or rec.state,
            step=int(step) if step else 0,
            action=int(action) if action else 0,
            attempt=attempt,
            code=code,
            detail=detail,
        )
        rec.next_seq += 1
        return ev

    async def _transition(self, run: SagaRun, new: SagaState, last_error: str, extra: Sequence[Record] = ()) -> None:
        rec = run.record
        check_transition(rec.state, new)
        ev = self._event(run, STATE, detail=last_error, state=new)
        change = StateChange(rec.saga_id, rec.state, new, last_error, ev.at_epoch_ms)
        await self._append(run, [ev, change, *extra], wait=True)
        logger.info("saga {} {}", new.name, last_error)
        if new is not SagaState.COMPENSATING:
            outcome = new.name.lower()
            self._metrics.child(self._metrics.completed, outcome).inc()
            elapsed_s = (ev.at_epoch_ms - rec.created_at_epoch_ms) / 1000
            self._metrics.child(self._metrics.duration, outcome).observe(max(0.0, elapsed_s))
            if new is SagaState.DEAD_LETTERED:
                self._metrics.dead_letters_open.inc()

    async def _append(self, run: SagaRun, records: Sequence[Record], wait: bool) -> None:
        """Applies the records' events to the working record now, to the durable view once committed."""
        for r in records:
            if isinstance(r, Event):
                run.record.apply(r)
        fut = self._journal.submit(records)

        def committed(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                run.write_error = run.write_error or (f.exception() or asyncio.CancelledError())
                return
            for r in records:
                if isinstance(r, Event):
                    run.view.apply(r)
                    for listener in list(run.listeners):
                        listener(r, run.view)

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


def _schedule(policy: RetryPolicy) -> Generator[float, Any, None]:
    """Upper bounds of the jittered waits: initial, initial*multiplier, ..., capped."""
    gen = backoff.expo(
        base=policy.multiplier, factor=policy.initial_backoff_ms / 1000, max_value=policy.max_backoff_ms / 1000
    )
    next(gen)  # backoff's generators are primed with one next() before yielding values
    return gen
