"""One saga in memory: its journaled row, its events folded into step progress, and what it must do next.

The event log is the truth: recovery, GetSaga and the engine all derive step progress from it with fold_steps(),
including each step's retry budget and the due time of its next attempt (so a restart keeps the same schedule).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.definitions.model import Definition
from coordinator.config import OperationPolicy
from coordinator.saga.errors import may_have_applied
from coordinator.saga.model import Action, SagaState, StepStatus


class EventKind(enum.StrEnum):
    """What an event records. The values are what the journal stores and saga.v1 SagaEvent.kind shows."""

    CREATED = "created"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    STATE = "state"
    DEADLINE = "deadline"
    ADMIN_RETRY = "admin_retry"
    ADMIN_RESOLVE = "admin_resolve"
    ACCEPTED = "accepted"
    """The service took the call and will finish it later (a long-running operation); wait_ms: the first poll."""
    POLLED = "polled"
    """Asked the service (GetOperation): still in progress; wait_ms: the next poll."""
    ASKED = "asked"
    """Asked the service what became of a call whose outcome was unknown; code: its answer ("DONE:OK", "NOT_FOUND")."""


# Events that move the saga between states (each journaled beside a guarded StateChange).
STATE_KINDS = frozenset({EventKind.STATE, EventKind.ADMIN_RETRY, EventKind.ADMIN_RESOLVE})


@dataclass(frozen=True, slots=True)
class Event:
    """One journaled record of a saga's log."""

    saga_id: str
    seq: int
    at_epoch_ms: int
    kind: EventKind
    state: SagaState
    step: int = 0
    action: int = 0
    attempt: int = 0
    code: str = ""
    detail: str = ""
    wait_ms: int = 0
    """On RETRYING: the backoff drawn before the next attempt, which is due at at_epoch_ms + wait_ms. On ACCEPTED and
    POLLED: the wait before the service is asked (next) about its operation."""
    spent_ms: int = 0
    """On RETRYING: retry time this step and action have spent of their policy so far, this wait included."""
    output: bytes = b""
    """On a forward SUCCEEDED: the step's response, serialized, when a later request reads it (else empty)."""


@dataclass(slots=True)
class StepProgress:
    step: int
    """The step's number in its definition (from 1)."""
    status: StepStatus = StepStatus.PENDING
    forward_attempts: int = 0
    compensate_attempts: int = 0
    last_error: str = ""
    forward_code: str = ""
    started_at_epoch_ms: int = 0
    updated_at_epoch_ms: int = 0
    compensate_base: int = 0
    """Compensation attempts made before the last operator retry: the policy's budget counts from here."""
    forward_spent_ms: int = 0
    """Retry time spent on the forward call, as last journaled (RETRYING.spent_ms)."""
    compensate_spent_ms: int = 0
    """Retry time spent on the compensation since the last operator retry."""
    next_attempt_at_epoch_ms: int = 0
    """When the next attempt is due after a RETRYING; 0 once it started."""
    next_attempt_wait_ms: int = 0
    """The wait that RETRYING drew: a resumed saga never waits longer than this (the wall clock may have jumped)."""
    waiting: int = 0
    """The Action whose call the service accepted and has not finished (a long-running operation); 0: none."""
    accepted_at_epoch_ms: int = 0
    """When the service accepted the waiting call."""
    heard_at_epoch_ms: int = 0
    """When the service last answered about it (accepted, or a poll saying in progress)."""
    next_poll_at_epoch_ms: int = 0
    """When it is asked next."""
    polls: int = 0
    """Polls answered "in progress" since it was accepted."""
    open_attempt: int = 0
    """The Action of an attempt journaled as started with no outcome yet (0: none). Seen on a saga loaded from the
    journal, it is an attempt a crash interrupted: spent, its outcome unknown (Engine settles it before the next)."""
    attempt_started_at_epoch_ms: int = 0
    """When the last attempt of either action started."""
    forward_base: int = 0
    """Forward attempts made before the last operator retry of a parked retriable step: its budget counts from here."""
    output: bytes = b""
    """The forward call's response (serialized), kept when a later request reads it."""

    def copy(self) -> StepProgress:
        # Spelled out: dataclasses.replace re-runs field introspection on every call (a hot path).
        return StepProgress(
            self.step,
            self.status,
            self.forward_attempts,
            self.compensate_attempts,
            self.last_error,
            self.forward_code,
            self.started_at_epoch_ms,
            self.updated_at_epoch_ms,
            self.compensate_base,
            self.forward_spent_ms,
            self.compensate_spent_ms,
            self.next_attempt_at_epoch_ms,
            self.next_attempt_wait_ms,
            self.waiting,
            self.accepted_at_epoch_ms,
            self.heard_at_epoch_ms,
            self.next_poll_at_epoch_ms,
            self.polls,
            self.open_attempt,
            self.attempt_started_at_epoch_ms,
            self.forward_base,
            self.output,
        )

    @property
    def may_have_applied(self) -> bool:
        """True unless the forward call was never sent or the service said it applied nothing."""
        return self.may_have_applied_by(None)

    def may_have_applied_by(self, rejected: frozenset[str] | None) -> bool:
        """may_have_applied, with the step's own rejection codes (None: the default table's)."""
        if self.status is StepStatus.PENDING:
            return False
        if self.status is StepStatus.FAILED:
            return may_have_applied(self.forward_code, rejected)
        return True

    def attempts(self, action: Action) -> int:
        """Attempts of `action` ever made (the attempt number of the last one started)."""
        return self.forward_attempts if action is Action.FORWARD else self.compensate_attempts

    def retry_due(self, action: Action) -> tuple[int, int]:
        """(due at epoch ms, wait ms) of a journaled retry of `action` not yet started; (0, 0) if none. A forward
        retry is pending only while the step is in flight: a compensation never waits out a forward's backoff."""
        pending = StepStatus.IN_FLIGHT if action is Action.FORWARD else StepStatus.COMPENSATING
        if self.status is not pending:
            return 0, 0
        return self.next_attempt_at_epoch_ms, self.next_attempt_wait_ms

    def budget_used(self, action: Action) -> tuple[int, int]:
        """(attempts, retry ms) spent of the policy's budget for `action`: forward since the first attempt,
        compensation since the last operator retry."""
        if action is Action.FORWARD:
            return self.forward_attempts - self.forward_base, self.forward_spent_ms
        return self.compensate_attempts - self.compensate_base, self.compensate_spent_ms


def apply_event(steps: dict[int, StepProgress], event: Event) -> None:
    """Folds one event into the steps' progress."""
    if event.kind is EventKind.ADMIN_RETRY and event.state is SagaState.RUNNING:
        # An operator's retry of a saga parked past its pivot: the failed (retriable) step goes again, with a fresh
        # forward budget and the same idempotency key.
        for progress in steps.values():
            if progress.status is StepStatus.FAILED:
                progress.status = StepStatus.IN_FLIGHT
                progress.forward_base = progress.forward_attempts
                progress.forward_spent_ms = 0
                progress.next_attempt_at_epoch_ms = progress.next_attempt_wait_ms = 0
                progress.waiting = 0
                progress.open_attempt = 0
        return
    if event.kind is EventKind.ADMIN_RETRY:
        # An operator's retry grants every compensation a fresh budget.
        for progress in steps.values():
            progress.compensate_base = progress.compensate_attempts
            progress.compensate_spent_ms = 0
            progress.next_attempt_at_epoch_ms = progress.next_attempt_wait_ms = 0
            progress.waiting = 0
            progress.open_attempt = 0
        return
    if not event.step:
        return
    found = steps.get(event.step)
    if found is None:
        found = steps[event.step] = StepProgress(event.step)
    progress = found
    progress.updated_at_epoch_ms = event.at_epoch_ms
    forward = event.action == Action.FORWARD
    kind = event.kind
    if kind is EventKind.ACCEPTED:
        progress.open_attempt = 0
        progress.waiting = event.action
        progress.accepted_at_epoch_ms = progress.heard_at_epoch_ms = event.at_epoch_ms
        progress.next_poll_at_epoch_ms = event.at_epoch_ms + event.wait_ms
        progress.polls = 0
        return
    if kind is EventKind.POLLED:
        progress.heard_at_epoch_ms = event.at_epoch_ms
        progress.next_poll_at_epoch_ms = event.at_epoch_ms + event.wait_ms
        progress.polls += 1
        return
    if kind is EventKind.ASKED:
        return
    progress.waiting = 0  # any other outcome of the step ends a wait
    if kind is EventKind.STARTED:
        progress.open_attempt = event.action
        progress.attempt_started_at_epoch_ms = event.at_epoch_ms
        progress.next_attempt_at_epoch_ms = progress.next_attempt_wait_ms = 0
        if forward:
            progress.status = StepStatus.IN_FLIGHT
            progress.forward_attempts = max(progress.forward_attempts, event.attempt)
            progress.started_at_epoch_ms = progress.started_at_epoch_ms or event.at_epoch_ms
        else:
            progress.status = StepStatus.COMPENSATING
            progress.compensate_attempts = max(progress.compensate_attempts, event.attempt)
        return
    progress.open_attempt = 0  # the attempt's outcome: succeeded, retrying, failed or past the deadline
    if kind is EventKind.SUCCEEDED:
        progress.status = StepStatus.SUCCEEDED if forward else StepStatus.COMPENSATED
        if forward:
            progress.forward_code = "OK"
            progress.output = event.output
    elif kind is EventKind.RETRYING:
        progress.last_error = event.detail
        progress.next_attempt_at_epoch_ms = event.at_epoch_ms + event.wait_ms
        progress.next_attempt_wait_ms = event.wait_ms
        # max: a re-send after a long-running operation was lost journals spent_ms 0, which must not refund the time.
        if forward:
            progress.forward_spent_ms = max(progress.forward_spent_ms, event.spent_ms)
        else:
            progress.compensate_spent_ms = max(progress.compensate_spent_ms, event.spent_ms)
    elif kind is EventKind.FAILED or kind is EventKind.DEADLINE:
        progress.last_error = event.detail
        if forward:
            progress.status = StepStatus.FAILED
            progress.forward_code = event.code
        else:
            progress.status = StepStatus.COMPENSATION_FAILED


def fold_steps(events: list[Event]) -> dict[int, StepProgress]:
    steps: dict[int, StepProgress] = {}
    for event in events:
        apply_event(steps, event)
    return steps


@dataclass(slots=True)
class SagaRecord:
    """A saga's journaled row plus its step progress; the engine's working copy while it runs."""

    saga_id: str
    order_id: str
    user_id: str
    request: bytes  # PlaceOrderRequest without payment_info, serialized
    payment_sealed: bytes
    payload_hash: str
    state: SagaState
    created_at_epoch_ms: int
    updated_at_epoch_ms: int
    deadline_epoch_ms: int
    last_error: str = ""
    """Why the saga failed (its cause), never the dead-letter note."""
    parked_note: str = ""
    """Why it waits for an operator: set when DEAD_LETTERED, cleared by an operator retry, kept once RESOLVED."""
    steps: dict[int, StepProgress] = field(default_factory=dict)
    """Step number -> its progress; a step with no event yet has none (progress() makes it, PENDING)."""
    next_seq: int = 1
    trace_context: str = ""
    """The trace its spans join (common.tracing.carrier); "" when tracing was off at its creation."""
    definition_hash: str = ""
    """The definition it runs (common.definitions.model.Definition.hash), fixed at its creation: it finishes on it."""
    retained_only: bool = False
    """What retention kept of a removed saga (DedupRecord.as_saga): its outcome, no input, steps or events."""

    def apply(self, event: Event) -> None:
        self.next_seq = max(self.next_seq, event.seq + 1)
        self.updated_at_epoch_ms = event.at_epoch_ms
        self.state = event.state
        if event.kind in STATE_KINDS:
            # Mirrors what transitions.move() writes to the sagas row, so a live view and a re-read agree.
            if event.state is SagaState.DEAD_LETTERED:
                self.parked_note = event.detail
            elif event.kind is EventKind.ADMIN_RETRY:
                self.parked_note = ""
            elif event.kind is EventKind.STATE and event.detail:
                self.last_error = event.detail
        apply_event(self.steps, event)

    @property
    def message(self) -> str:
        """What a client is told: the cause, then the dead-letter note when there is one."""
        if not self.parked_note:
            return self.last_error
        return f"{self.last_error}; {self.parked_note}" if self.last_error else self.parked_note

    def copy(self) -> SagaRecord:
        # Spelled out: dataclasses.replace re-runs field introspection on every call (a hot path: 3 copies a saga).
        return SagaRecord(
            self.saga_id,
            self.order_id,
            self.user_id,
            self.request,
            self.payment_sealed,
            self.payload_hash,
            self.state,
            self.created_at_epoch_ms,
            self.updated_at_epoch_ms,
            self.deadline_epoch_ms,
            self.last_error,
            self.parked_note,
            {step: progress.copy() for step, progress in self.steps.items()},
            self.next_seq,
            self.trace_context,
            self.definition_hash,
            self.retained_only,
        )

    def progress(self, step: int) -> StepProgress:
        """The step's progress (PENDING if nothing happened to it yet)."""
        found = self.steps.get(step)
        if found is None:
            found = self.steps[step] = StepProgress(step)
        return found

    def to_compensate(self, flow: Definition, rejected: Mapping[int, frozenset[str] | None] | None = None) -> list[int]:
        """Steps that have a compensation, may have taken effect and are not yet undone, last first. A retriable
        step has none; a pivot's runs only if the pivot did not succeed (else the saga never compensates)."""
        out = []
        for s in reversed(flow.steps):
            if s.compensation is None:
                continue
            p = self.steps.get(s.number)
            applied = p is not None and p.may_have_applied_by(rejected.get(s.number) if rejected else None)
            if p is not None and applied and p.status is not StepStatus.COMPENSATED:
                out.append(s.number)
        return out

    def waiting_on(self) -> tuple[int, Action] | None:
        """The step and action whose call a service accepted and has not finished, if any (at most one at a time)."""
        for s in list(self.steps.values()):
            # Read once: the metrics endpoint's thread calls this while the loop may end the wait (waiting = 0).
            if waiting := s.waiting:
                return s.step, Action(waiting)
        return None

    def next_forward(self, flow: Definition) -> int | None:
        for s in flow.steps:
            p = self.steps.get(s.number)
            if p is None or p.status is not StepStatus.SUCCEEDED:
                return s.number
        return None

    def past_pivot(self, flow: Definition) -> bool:
        """The pivot succeeded: the saga only goes forward from here (no deadline, no compensation)."""
        pivot = flow.pivot
        if not pivot:
            return False
        p = self.steps.get(pivot)
        return p is not None and p.status is StepStatus.SUCCEEDED


def asks_first(progress: StepProgress, policy: OperationPolicy) -> bool:
    """Whether the engine asks the service about the step's forward call before compensating it (the condition of
    Engine._nothing_to_undo, which dry runs show too): the forward outcome was unknown when the step stopped (FAILED or
    still IN_FLIGHT), no compensation of it was tried yet, and the step's policy asks about unknown outcomes."""
    unknown = progress.status in (StepStatus.FAILED, StepStatus.IN_FLIGHT)
    return progress.compensate_attempts == 0 and unknown and policy.ask_unknown
