"""Conversions between the coordinator's records and saga.v1 messages; page tokens."""

from __future__ import annotations

import base64
import binascii

from google.protobuf.timestamp_pb2 import Timestamp

from common.definitions.model import Definition
from coordinator.journal import DeadLetterRow
from coordinator.saga.errors import InvalidRequest
from coordinator.saga.inputs import legacy_step, split_key
from coordinator.saga.model import SagaState
from coordinator.saga.record import Event, EventKind, SagaRecord, StepProgress
from protos.saga.v1 import saga_pb2

CLIENT_STATUS = {
    SagaState.SUCCEEDED: saga_pb2.SUCCESS,
    SagaState.FAILED: saga_pb2.FAILED,
    SagaState.DEAD_LETTERED: saga_pb2.FAILED,
    SagaState.RESOLVED: saga_pb2.FAILED,
}


def ts(epoch_ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(epoch_ms)
    return t


def saga_message(
    rec: SagaRecord, shard_id: str, flow: Definition | None, events: list[Event] | None = None
) -> saga_pb2.Saga:
    """flow: the saga's definition (None if this shard does not hold it: steps are then numbered, not named)."""
    req = saga_pb2.PlaceOrderRequest.FromString(rec.request)  # the order flow's clear part; empty for other types
    saga_type, key = split_key(rec.order_id)
    msg = saga_pb2.Saga(
        saga_id=rec.saga_id,
        order_id=key if saga_type == "order" else "",
        saga_type=saga_type,
        key=key,
        definition_hash=rec.definition_hash,
        definition_version=flow.version if flow else "",
        user_id=rec.user_id,
        state=int(rec.state),
        items=req.items,
        created_at=ts(rec.created_at_epoch_ms),
        updated_at=ts(rec.updated_at_epoch_ms),
        deadline=ts(rec.deadline_epoch_ms),
        last_error=rec.last_error,
        parked_note=rec.parked_note,
        shard_id=shard_id,
    )
    numbers = [s.number for s in flow.steps] if flow else sorted(rec.steps)
    for n in [] if rec.retained_only else numbers:  # what retention kept of a removed saga has no steps
        p = rec.steps.get(n) or StepProgress(n)
        step_id = flow.step(n).id if flow else str(n)
        info = msg.steps.add(
            step=legacy_step(step_id),
            step_id=step_id,
            kind=str(flow.step(n).kind) if flow else "",
            status=int(p.status),
            forward_attempts=p.forward_attempts,
            compensate_attempts=p.compensate_attempts,
            last_error=p.last_error,
        )
        if p.started_at_epoch_ms:
            info.started_at.CopyFrom(ts(p.started_at_epoch_ms))
        if p.updated_at_epoch_ms:
            info.updated_at.CopyFrom(ts(p.updated_at_epoch_ms))
        if p.waiting:
            info.waiting = True
            info.waiting_action = p.waiting
            info.waiting_since.CopyFrom(ts(p.accepted_at_epoch_ms))
            info.next_poll_at.CopyFrom(ts(p.next_poll_at_epoch_ms))
    for ev in events or ():
        msg.events.append(event_message(ev, flow))
    return msg


def _step_id(flow: Definition | None, number: int) -> str:
    if not number:
        return ""
    if flow is None or number > len(flow.steps):
        return str(number)
    return flow.step(number).id


def event_message(event: Event, flow: Definition | None) -> saga_pb2.SagaEvent:
    step_id = _step_id(flow, event.step)
    msg = saga_pb2.SagaEvent(
        seq=event.seq,
        at=ts(event.at_epoch_ms),
        kind=str(event.kind),
        step=legacy_step(step_id),
        step_id=step_id,
        action=event.action,
        attempt=event.attempt,
        code=event.code,
        detail=event.detail,
        state=int(event.state),
    )
    if event.kind in (EventKind.RETRYING, EventKind.ACCEPTED, EventKind.POLLED):
        msg.next_attempt_at.CopyFrom(ts(event.at_epoch_ms + event.wait_ms))
    return msg


def place_order_response(rec: SagaRecord, pending: bool) -> saga_pb2.PlaceOrderResponse:
    """pending: a no_wait answer (PENDING until the saga ends). Otherwise a saga still compensating (a long-running
    compensation it waits on) is FAILED already: the order did not go through, whatever is left to undo."""
    if pending and not rec.state.terminal and rec.state is not SagaState.DEAD_LETTERED:
        status = saga_pb2.PENDING
    elif rec.state is SagaState.COMPENSATING:
        status = saga_pb2.FAILED
    else:
        status = CLIENT_STATUS.get(rec.state, saga_pb2.PENDING)
    return saga_pb2.PlaceOrderResponse(
        order_id=split_key(rec.order_id)[1],
        status=status,
        error_message="" if status in (saga_pb2.SUCCESS, saga_pb2.PENDING) else rec.message,
        saga_id=rec.saga_id,
        state=int(rec.state),
    )


def start_saga_response(rec: SagaRecord, flow: Definition | None) -> saga_pb2.StartSagaResponse:
    saga_type, key = split_key(rec.order_id)
    quiet = rec.state is SagaState.SUCCEEDED or rec.state is SagaState.RUNNING
    return saga_pb2.StartSagaResponse(
        saga_type=saga_type,
        key=key,
        saga_id=rec.saga_id,
        state=int(rec.state),
        error_message="" if quiet else rec.message,
        definition_hash=rec.definition_hash,
        definition_version=flow.version if flow else "",
    )


def dead_letter_message(row: DeadLetterRow, shard_id: str, flow: Definition | None) -> saga_pb2.DeadLetter:
    saga_type, key = split_key(row.order_id)
    step_id = _step_id(flow, row.step)
    forward = flow is not None and row.step <= len(flow.steps) and flow.step(row.step).kind == "retriable"
    return saga_pb2.DeadLetter(
        saga_id=row.saga_id,
        order_id=key if saga_type == "order" else "",
        saga_type=saga_type,
        key=key,
        step=legacy_step(step_id),
        step_id=step_id,
        action=saga_pb2.ACTION_FORWARD if forward else saga_pb2.ACTION_COMPENSATE,
        last_error=row.last_error,
        attempts=row.attempts,
        parked_at=ts(row.parked_at_epoch_ms),
        closed=row.closed_at_epoch_ms is not None,
        closed_note=row.closed_note,
        shard_id=shard_id,
    )


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidRequest("page_size", "must not be negative")
    return min(requested or default, maximum)


def encode_token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest("page_token", "is not a token this service issued") from e


def saga_cursor(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    created, sep, saga_id = decode_token(token).partition(":")
    if not sep or not created.isdigit() or not saga_id:
        raise InvalidRequest("page_token", "is not a token this service issued")
    return int(created), saga_id


def dead_letter_cursor(token: str) -> int:
    if not token:
        return 0
    text = decode_token(token)
    if not text.startswith("dl:") or not text[3:].isdigit():
        raise InvalidRequest("page_token", "is not a token this service issued")
    return int(text[3:])
