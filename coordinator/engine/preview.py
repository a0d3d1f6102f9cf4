"""What an operator's action on a dead-lettered saga would do, without doing it: the dry runs of RetryDeadLetter and
ResolveDeadLetter (saga.v1 SagaPreview).

plan_retry() derives the plan from the saga's journaled record by the engine's own rules, not a description of them:
it folds the very ADMIN_RETRY event the real retry journals (transitions.records_for, applied by SagaRecord.apply) into
a copy of the record, then walks SagaRecord.to_compensate() as Engine._compensate does. Each step's compensation is
called with idempotency_key(saga_id, step, COMPENSATE) as attempt compensate_attempts + 1 (StepProgress.attempts), and
is preceded by a GetOperation about the step's forward call when Engine._nothing_to_undo would ask (asks_first()).

The plan is what happens if every call succeeds at its first attempt: a call that fails is retried with the same key
(more attempts, same calls), one that fails for good parks the saga again, and a step the service says was rejected is
not compensated at all. Pure functions over a SagaRecord: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.definitions.model import Definition
from common.definitions.model import Step as StepDef
from coordinator.engine.transitions import records_for
from coordinator.saga.errors import WrongState
from coordinator.saga.inputs import legacy_step, split_key
from coordinator.saga.model import Action, SagaState, idempotency_key
from coordinator.saga.policies import Policies
from coordinator.saga.record import EventKind, SagaRecord, StepProgress, asks_first
from protos.saga.v1 import saga_pb2


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call an action would make (saga.v1 PlannedCall)."""

    step: int
    """The step's number in its definition."""
    step_id: str
    action: Action
    service: str
    """The service's name in the shard's [services] table (the step's `service:`), e.g. "payment"."""
    method: str
    """Full gRPC method path, e.g. "/shop.v1.PaymentService/RefundPayment"."""
    idempotency_key: str
    attempt: int
    """The attempt number it would be: every attempt of this step and action ever made, plus one."""
    retry_of_earlier_attempt: bool
    """An attempt with this key was made before."""
    asks_first: bool
    """GetOperation about the step's forward call comes first; a "rejected" answer skips this call."""


@dataclass(frozen=True, slots=True)
class SagaPlan:
    """What an action would do to one saga (saga.v1 SagaPreview, without the shard id)."""

    order_id: str
    saga_id: str
    state_now: SagaState
    end_state: SagaState
    """Where the saga ends if every call succeeds."""
    calls: tuple[PlannedCall, ...]
    """In the order they would be made."""


def resumes_forward(saga: SagaRecord, flow: Definition) -> bool:
    """An operator's retry of this parked saga resumes it forward: it was parked past its pivot (a retriable step
    failed for good), where compensation is no longer possible."""
    return saga.past_pivot(flow)


def plan_retry(saga: SagaRecord, flow: Definition, policies: Policies) -> SagaPlan:
    """The calls an operator retry of this DEAD_LETTERED saga would make, in order, and its end state: FAILED once
    compensated, or SUCCEEDED for a saga parked past its pivot (the failed retriable step and those after it run).
    WrongState for a saga in any other state, as the retry itself."""
    _check_parked(saga)
    forward = resumes_forward(saga, flow)
    resumed = saga.copy()
    event, _ = records_for(
        resumed,
        SagaState.RUNNING if forward else SagaState.COMPENSATING,
        saga.updated_at_epoch_ms,
        kind=EventKind.ADMIN_RETRY,
        note="dry run",
    )
    resumed.apply(event)
    calls = []
    if forward:
        first = resumed.next_forward(flow) or len(flow.steps) + 1
        for step in flow.steps[first - 1 :]:
            progress = resumed.progress(step.number)
            made = progress.attempts(Action.FORWARD)
            calls.append(_planned(saga, step, progress, Action.FORWARD, made, asks=False))
        return SagaPlan(saga.order_id, saga.saga_id, saga.state, SagaState.SUCCEEDED, tuple(calls))
    rejected = {step.number: policies.of(flow, step).rejected for step in flow.steps}
    for number in resumed.to_compensate(flow, rejected):
        step = flow.step(number)
        progress = resumed.progress(number)
        made = progress.attempts(Action.COMPENSATE)
        asks = asks_first(progress, policies.of(flow, step).operations)
        calls.append(_planned(saga, step, progress, Action.COMPENSATE, made, asks))
    return SagaPlan(saga.order_id, saga.saga_id, saga.state, SagaState.FAILED, tuple(calls))


def _planned(
    saga: SagaRecord, step: StepDef, progress: StepProgress, action: Action, made: int, asks: bool
) -> PlannedCall:
    call = step.call if action is Action.FORWARD else step.compensation
    assert call is not None
    return PlannedCall(
        step=step.number,
        step_id=step.id,
        action=action,
        service=step.endpoint,
        method=call.path,
        idempotency_key=idempotency_key(saga.saga_id, step.id, action),
        attempt=made + 1,
        retry_of_earlier_attempt=made > 0,
        asks_first=asks,
    )


def plan_resolve(saga: SagaRecord) -> SagaPlan:
    """What resolving this DEAD_LETTERED saga would do: no call; it ends RESOLVED. WrongState for a saga in any other
    state, as the resolve itself."""
    _check_parked(saga)
    return SagaPlan(saga.order_id, saga.saga_id, saga.state, SagaState.RESOLVED, ())


def _check_parked(saga: SagaRecord) -> None:
    if saga.state is not SagaState.DEAD_LETTERED:
        raise WrongState(f"saga of order {saga.order_id} is {saga.state.name}, not DEAD_LETTERED")


def preview_message(plan: SagaPlan, shard_id: str) -> saga_pb2.SagaPreview:
    saga_type, key = split_key(plan.order_id)
    return saga_pb2.SagaPreview(
        order_id=key if saga_type == "order" else "",
        saga_type=saga_type,
        key=key,
        saga_id=plan.saga_id,
        shard_id=shard_id,
        state_now=int(plan.state_now),
        end_state=int(plan.end_state),
        calls=[
            saga_pb2.PlannedCall(
                step=legacy_step(c.step_id),
                step_id=c.step_id,
                action=int(c.action),
                service=c.service,
                method=c.method,
                idempotency_key=c.idempotency_key,
                attempt=c.attempt,
                retry_of_earlier_attempt=c.retry_of_earlier_attempt,
                asks_first=c.asks_first,
            )
            for c in plan.calls
        ],
    )
