"""The saga's vocabulary: states and their one transition table, actions, step statuses. What the steps are is the
saga's definition's (common.definitions): steps are numbered from 1 in its order, named by their ids.

Enum values equal the saga.v1 proto enum numbers so conversion is a plain int() both ways.
"""

from __future__ import annotations

import enum

from common.definitions.model import Action, idempotency_key

__all__ = ["Action", "idempotency_key"]


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
# RUNNING -> DEAD_LETTERED -> RUNNING: a retriable step (after the pivot: never compensated) failed for good and waits
# for an operator, whose retry resumes it forward.
TRANSITIONS: dict[SagaState, frozenset[SagaState]] = {
    SagaState.RUNNING: frozenset({SagaState.SUCCEEDED, SagaState.COMPENSATING, SagaState.DEAD_LETTERED}),
    SagaState.COMPENSATING: frozenset({SagaState.FAILED, SagaState.DEAD_LETTERED}),
    SagaState.DEAD_LETTERED: frozenset({SagaState.COMPENSATING, SagaState.RESOLVED, SagaState.RUNNING}),
    SagaState.SUCCEEDED: frozenset(),
    SagaState.FAILED: frozenset(),
    SagaState.RESOLVED: frozenset(),
}


class IllegalTransition(AssertionError):
    """A state change the transition table forbids: a bug, never a user error."""


def check_transition(current: SagaState, new: SagaState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"illegal saga transition {current.name} -> {new.name}")


class StepStatus(enum.IntEnum):
    PENDING = 1
    IN_FLIGHT = 2
    SUCCEEDED = 3
    FAILED = 4
    COMPENSATING = 5
    COMPENSATED = 6
    COMPENSATION_FAILED = 7
