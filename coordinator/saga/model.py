"""The saga's vocabulary: states and their one transition table, steps, actions, step statuses.

Enum values equal the saga.v1 proto enum numbers so conversion is a plain int() both ways.
"""

from __future__ import annotations

import enum


class SagaState(enum.IntEnum):
    RUNNING = 1
    COMPENSATING = 2
    SUCCEEDED = 3
    FAILED = 4
    DEAD_LETTERED = 5
    RESOLVED = 6

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({SagaState.SUCCEEDED, SagaState.FAILED, SagaState.RESOLVED})

# The only legal moves. The journal enforces each one again in SQL (UPDATE ... WHERE state = expected).
TRANSITIONS: dict[SagaState, frozenset[SagaState]] = {
    SagaState.RUNNING: frozenset({SagaState.SUCCEEDED, SagaState.COMPENSATING}),
    SagaState.COMPENSATING: frozenset({SagaState.FAILED, SagaState.DEAD_LETTERED}),
    SagaState.DEAD_LETTERED: frozenset({SagaState.COMPENSATING, SagaState.RESOLVED}),
    SagaState.SUCCEEDED: frozenset(),
    SagaState.FAILED: frozenset(),
    SagaState.RESOLVED: frozenset(),
}


class IllegalTransition(AssertionError):
    """A state change the transition table forbids: a bug, never a user error."""


def check_transition(current: SagaState, new: SagaState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"illegal saga transition {current.name} -> {new.name}")


class Step(enum.IntEnum):
    CREATE_ORDER = 1
    RESERVE_INVENTORY = 2
    PROCESS_PAYMENT = 3
    SCHEDULE_SHIPMENT = 4

    @property
    def label(self) -> str:
        return self.name.lower()


STEPS: tuple[Step, ...] = tuple(Step)


class Action(enum.IntEnum):
    FORWARD = 1
    COMPENSATE = 2

    @property
    def label(self) -> str:
        return "forward" if self is Action.FORWARD else "compensate"


class StepStatus(enum.IntEnum):
    PENDING = 1
    IN_FLIGHT = 2
    SUCCEEDED = 3
    FAILED = 4
    COMPENSATING = 5
    COMPENSATED = 6
    COMPENSATION_FAILED = 7


def idempotency_key(saga_id: str, step: Step, action: Action) -> str:
    """The key a service sees for (saga, step, action): identical across retries and restarts."""
    return f"{saga_id}/{step.label}/{action.label}"
