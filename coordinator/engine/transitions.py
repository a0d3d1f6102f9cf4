"""The one way a saga moves between states, for the engine and the operators' actions alike.

move() checks the move against the transition table (model.TRANSITIONS), writes the state event and the guarded
StateChange in one commit (the journal's UPDATE ... WHERE state = expected checks it again), and counts it in the
metrics. The sagas row and SagaRecord.apply() read the same fields: `last_error` is the failure's cause and
`parked_note` the dead-letter note, never one string parsed back into the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from coordinator.journal import Record, StateChange
from coordinator.metrics import ShardMetrics
from coordinator.saga.model import SagaState, check_transition
from coordinator.saga.record import Event, EventKind, SagaRecord

Write = Callable[[Sequence[Record]], Awaitable[None]]
"""Commits records and applies their events to the saga's in-memory record(s); returns once they are durable."""


def records_for(
    saga: SagaRecord,
    new: SagaState,
    at_epoch_ms: int,
    *,
    kind: EventKind = EventKind.STATE,
    cause: str | None = None,
    note: str = "",
) -> tuple[Event, StateChange]:
    """The state event and the guarded row update that move `saga` to `new`.

    `cause` replaces the saga's failure cause (None keeps it). `note` is the parked note when `new` is DEAD_LETTERED,
    else the operator's words for an ADMIN_RETRY / ADMIN_RESOLVE event."""
    check_transition(saga.state, new)
    last_error = saga.last_error if cause is None else cause
    if new is SagaState.DEAD_LETTERED:
        parked_note = note
    elif kind is EventKind.ADMIN_RETRY:
        parked_note = ""  # resumed: the note no longer holds
    else:
        parked_note = saga.parked_note
    # What SagaRecord.apply() reads back: the note for parking and operator events, else the cause.
    detail = note if (new is SagaState.DEAD_LETTERED or kind is not EventKind.STATE) else last_error
    event = Event(saga.saga_id, saga.next_seq, at_epoch_ms, kind, new, detail=detail)
    change = StateChange(saga.saga_id, saga.state, new, last_error, parked_note, at_epoch_ms)
    return event, change


async def move(
    saga: SagaRecord,
    new: SagaState,
    at_epoch_ms: int,
    write: Write,
    metrics: ShardMetrics,
    *,
    kind: EventKind = EventKind.STATE,
    cause: str | None = None,
    note: str = "",
    extra: Sequence[Record] = (),
) -> Event:
    """Moves `saga` to `new` durably (with `extra` records in the same commit), then counts the move."""
    old = saga.state
    event, change = records_for(saga, new, at_epoch_ms, kind=kind, cause=cause, note=note)
    await write([event, change, *extra])
    observe(metrics, saga, old, new, at_epoch_ms)
    return event


def observe(metrics: ShardMetrics, saga: SagaRecord, old: SagaState, new: SagaState, at_epoch_ms: int) -> None:
    """Counts one move: outcomes with their duration since acceptance, and the open dead letters gauge."""
    if old is SagaState.DEAD_LETTERED:
        metrics.dead_letters_open.dec()
    if new is SagaState.COMPENSATING or new is SagaState.RUNNING:
        return
    outcome = new.name.lower()
    metrics.child(metrics.completed, outcome).inc()
    elapsed_s = (at_epoch_ms - saga.created_at_epoch_ms) / 1000
    metrics.child(metrics.duration, outcome).observe(max(0.0, elapsed_s))
    if new is SagaState.DEAD_LETTERED:
        metrics.dead_letters_open.inc()
