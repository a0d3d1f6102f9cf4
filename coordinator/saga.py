"""One saga in memory: its journaled row, its events folded into step progress, and what it must do next.

The event log is the truth: recovery, GetSaga and the engine all derive step progress from it with fold_steps().
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from .errors import classify
from .model import STEPS, Action, SagaState, Step, StepStatus


@dataclass(frozen=True, slots=True)
class Event:
    """One journaled record of a saga's log."""

    saga_id: str
    seq: int
    at_epoch_ms: int
    kind: str
    state: SagaState
    step: int = 0
    action: int = 0
    attempt: int = 0
    code: str = ""
    detail: str = ""


# Event kinds.
CREATED = "created"
STARTED = "started"
SUCCEEDED = "succeeded"
RETRYING = "retrying"
FAILED = "failed"
STATE = "state"
DEADLINE = "deadline"
ADMIN_RETRY = "admin_retry"
ADMIN_RESOLVE = "admin_resolve"


@dataclass(slots=True)
class StepProgress:
    step: Step
    status: StepStatus = StepStatus.PENDING
    forward_attempts: int = 0
    compensate_attempts: int = 0
    last_error: str = ""
    forward_code: str = ""
    started_at_epoch_ms: int = 0
    updated_at_epoch_ms: int = 0

    def copy(self) -> StepProgress:
        return StepProgress(
            self.step,
            self.status,
            self.forward_attempts,
            self.compensate_attempts,
            self.last_error,
            self.forward_code,
            self.started_at_epoch_ms,
            self.updated_at_epoch_ms,
        )

    @property
    def may_have_applied(self) -> bool:
        """True unless the forward call was never sent or the service said it applied nothing."""
        if self.status is StepStatus.PENDING:
            return False
        if self.status is StepStatus.FAILED:
            return classify(_code(self.forward_code)).may_have_applied
        return True


def _code(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name] if name in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN


def new_steps() -> dict[Step, StepProgress]:
    return {s: StepProgress(s) for s in STEPS}


def apply_event(steps: dict[Step, StepProgress], ev: Event) -> None:
    """Folds one event into the steps' progress."""
    if not ev.step:
        return
    p = steps[Step(ev.step)]
    p.updated_at_epoch_ms = ev.at_epoch_ms
    forward = ev.action == Action.FORWARD
    if ev.kind == STARTED:
        if forward:
            p.status = StepStatus.IN_FLIGHT
            p.forward_attempts = max(p.forward_attempts, ev.attempt)
            p.started_at_epoch_ms = p.started_at_epoch_ms or ev.at_epoch_ms
        else:
            p.status = StepStatus.COMPENSATING
            p.compensate_attempts = max(p.compensate_attempts, ev.attempt)
    elif ev.kind == SUCCEEDED:
        p.status = StepStatus.SUCCEEDED if forward else StepStatus.COMPENSATED
        if forward:
            p.forward_code = "OK"
    elif ev.kind == RETRYING:
        p.last_error = ev.detail
    elif ev.kind in (FAILED, DEADLINE):
        p.last_error = ev.detail
        if forward:
            p.status = StepStatus.FAILED
            p.forward_code = ev.code
        else:
            p.status = StepStatus.COMPENSATION_FAILED


def fold_steps(events: list[Event]) -> dict[Step, StepProgress]:
    steps = new_steps()
    for ev in events:
        apply_event(steps, ev)
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
    steps: dict[Step, StepProgress] = field(default_factory=new_steps)
    next_seq: int = 1

    def apply(self, ev: Event) -> None:
        self.next_seq = max(self.next_seq, ev.seq + 1)
        self.updated_at_epoch_ms = ev.at_epoch_ms
        self.state = ev.state
        if ev.kind == STATE and ev.detail:
            self.last_error = ev.detail
        apply_event(self.steps, ev)

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
            {s: p.copy() for s, p in self.steps.items()},
            self.next_seq,
        )

    def to_compensate(self) -> list[Step]:
        """Steps that may have taken effect and are not yet undone, last first."""
        return [
            s
            for s in reversed(STEPS)
            if self.steps[s].may_have_applied and self.steps[s].status is not StepStatus.COMPENSATED
        ]

    def next_forward(self) -> Step | None:
        for s in STEPS:
            if self.steps[s].status is not StepStatus.SUCCEEDED:
                return s
        return None
