"""What a saga is, with no I/O: its states, actions and step statuses (model), its journaled record and events folded
into step progress (record), the retry schedule (retry), every error with its retry semantics (errors), its input as
journaled (inputs), each step's policies (policies), and the checks of a PlaceOrder before anything is written
(validation).

May import: coordinator.config, common, protos. Imported by every other part of the coordinator.
"""

from coordinator.saga.errors import CallClass, CallResult, SagaError
from coordinator.saga.model import TRANSITIONS, Action, SagaState, StepStatus, idempotency_key
from coordinator.saga.record import Event, EventKind, SagaRecord, StepProgress

__all__ = [
    "TRANSITIONS",
    "Action",
    "CallClass",
    "CallResult",
    "Event",
    "EventKind",
    "SagaError",
    "SagaRecord",
    "SagaState",
    "StepProgress",
    "StepStatus",
    "idempotency_key",
]
