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

from google.protobuf.descriptor import FileDescriptor

from coordinator.config import ShardConfig
from coordinator.engine.transitions import records_for
from coordinator.saga.errors import WrongState
from coordinator.saga.model import Action, SagaState, Step, idempotency_key
from coordinator.saga.record import EventKind, SagaRecord, asks_first
from protos.saga.v1 import saga_pb2
from protos.shop.v1 import inventory_pb2, order_pb2, payment_pb2, shipping_pb2


def _path(file: FileDescriptor, service: str, method: str) -> str:
    """The full gRPC method path, looked up in the shop.v1 descriptors (KeyError at import if it is not there)."""
    described = file.services_by_name[service]
    return f"/{described.full_name}/{described.methods_by_name[method].name}"


_SHOP: dict[Step, tuple[str, FileDescriptor, str, str, str]] = {
    Step.CREATE_ORDER: ("order", order_pb2.DESCRIPTOR, "OrderService", "CreateOrder", "CancelOrder"),
    Step.RESERVE_INVENTORY: (
        "inventory",
        inventory_pb2.DESCRIPTOR,
        "InventoryService",
        "ReserveInventory",
        "ReleaseInventory",
    ),
    Step.PROCESS_PAYMENT: ("payment", payment_pb2.DESCRIPTOR, "PaymentService", "ChargePayment", "RefundPayment"),
    Step.SCHEDULE_SHIPMENT: (
        "shipping",
        shipping_pb2.DESCRIPTOR,
        "ShippingService",
        "ScheduleShipment",
        "CancelShipment",
    ),
}
"""Per step: its service's name in the shard's [services] table, its shop.v1 file and service, forward and
compensation methods (as coordinator.engine.caller.GrpcCaller calls them)."""

SERVICE_OF_STEP: dict[Step, str] = {step: row[0] for step, row in _SHOP.items()}
"""The service each step calls: "order", "inventory", "payment" or "shipping"."""

METHOD_OF: dict[tuple[Step, Action], str] = {
    (step, action): _path(file, service, forward if action is Action.FORWARD else compensate)
    for step, (_, file, service, forward, compensate) in _SHOP.items()
    for action in Action
}
"""The full gRPC method of each step's forward call and compensation."""


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call an action would make (saga.v1 PlannedCall)."""

    step: Step
    action: Action
    service: str
    """"order", "inventory", "payment" or "shipping"."""
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


def plan_retry(saga: SagaRecord, cfg: ShardConfig) -> SagaPlan:
    """The calls an operator retry of this DEAD_LETTERED saga would make, in order, and its end state (FAILED).
    WrongState for a saga in any other state, as the retry itself."""
    _check_parked(saga)
    resumed = saga.copy()
    event, _ = records_for(
        resumed, SagaState.COMPENSATING, saga.updated_at_epoch_ms, kind=EventKind.ADMIN_RETRY, note="dry run"
    )
    resumed.apply(event)
    calls = []
    for step in resumed.to_compensate():
        progress = resumed.steps[step]
        made = progress.attempts(Action.COMPENSATE)
        calls.append(
            PlannedCall(
                step=step,
                action=Action.COMPENSATE,
                service=SERVICE_OF_STEP[step],
                method=METHOD_OF[(step, Action.COMPENSATE)],
                idempotency_key=idempotency_key(saga.saga_id, step, Action.COMPENSATE),
                attempt=made + 1,
                retry_of_earlier_attempt=made > 0,
                asks_first=asks_first(progress, cfg.operation_policy(step.label)),
            )
        )
    return SagaPlan(saga.order_id, saga.saga_id, saga.state, SagaState.FAILED, tuple(calls))


def plan_resolve(saga: SagaRecord) -> SagaPlan:
    """What resolving this DEAD_LETTERED saga would do: no call; it ends RESOLVED. WrongState for a saga in any other
    state, as the resolve itself."""
    _check_parked(saga)
    return SagaPlan(saga.order_id, saga.saga_id, saga.state, SagaState.RESOLVED, ())


def _check_parked(saga: SagaRecord) -> None:
    if saga.state is not SagaState.DEAD_LETTERED:
        raise WrongState(f"saga of order {saga.order_id} is {saga.state.name}, not DEAD_LETTERED")


def preview_message(plan: SagaPlan, shard_id: str) -> saga_pb2.SagaPreview:
    return saga_pb2.SagaPreview(
        order_id=plan.order_id,
        saga_id=plan.saga_id,
        shard_id=shard_id,
        state_now=int(plan.state_now),
        end_state=int(plan.end_state),
        calls=[
            saga_pb2.PlannedCall(
                step=int(c.step),
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
