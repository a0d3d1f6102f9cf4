"""Long-running operations (shop/v1/common.proto Operation, GetOperation): their answers and their timers.

A call the request's rules make long-running (lro_rules.py) is recorded in progress with its acceptance time and
answered `operation{done: false}`; it finishes once its duration has passed since acceptance. Two paths finish it,
both through ShopService's one synchronous completion, which checks and clears `in_progress` with no await in between,
so it happens once: a loop timer per operation (OperationTimers, re-armed from the store after a restart), and any read
of the key (a retry, GetOperation, its compensation) that finds it due first. Completion commits like any call, and
readers answer only what is durable (Store.barrier), so a crash before that commit just finishes it again on restart.

Due times are wall-clock epoch ms, since they must survive a restart; the timers run on the loop's monotonic clock and
re-arm if they fire before the wall clock says the operation is due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from google.protobuf.message import Message

from protos.shop.v1 import common_pb2
from service_stubs.keys import Answer, KeyRecord

MAX_POLL_AFTER_MS = 1_000
"""The longest wait suggested before asking again: a caller sees a finished operation within a second of it."""
MIN_POLL_AFTER_MS = 1
"""The shortest: 0 means "your own backoff" on the wire, and an operation that is due is finished at the next read."""
TYPE_URL_PREFIX = "type.googleapis.com/"
"""google.protobuf.Any's type URL prefix, as Any.Pack writes it."""

EpochClock = Callable[[], int]
"""Now, in wall-clock epoch milliseconds."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class OperationSettings:
    """How a service runs its long-running operations."""

    max_in_progress: int = 100_000
    """Operations in progress per service; past it a call that would start one gets RESOURCE_EXHAUSTED."""
    clock: EpochClock = field(default=wall_clock_ms)
    """Acceptance and due times (wall clock, epoch ms)."""


def poll_after_ms(record: KeyRecord, now_epoch_ms: int) -> int:
    """The wait to suggest before asking about `record` again: its time left, within [MIN, MAX]_POLL_AFTER_MS."""
    due_at = record.due_at_epoch_ms
    if due_at is None:
        return MAX_POLL_AFTER_MS
    return max(MIN_POLL_AFTER_MS, min(MAX_POLL_AFTER_MS, due_at - now_epoch_ms))


def in_progress_answer(record: KeyRecord, response_type: type[Message], now_epoch_ms: int) -> Answer:
    """The answer to a call whose operation is in progress: `response_type` with only `operation` set."""
    operation = common_pb2.Operation(name=record.key, done=False, poll_after_ms=poll_after_ms(record, now_epoch_ms))
    return Answer.success(_with_operation(response_type(), operation))


def done_answer(answer: Answer, response_type: type[Message], key: str) -> Answer:
    """A finished operation's answer: an OK response gains `operation{name: key, done: true}`; rejections stay as
    they are (a gRPC status has no room for it)."""
    if not answer.ok:
        return answer
    response = response_type.FromString(answer.response)
    return Answer.success(_with_operation(response, common_pb2.Operation(name=key, done=True)))


def _with_operation(response: Message, operation: common_pb2.Operation) -> Message:
    # Every shop response has an `operation` field, each under its own number: set it by name.
    cast(Any, response).operation.CopyFrom(operation)
    return response


def operation_state(
    key: str, record: KeyRecord | None, busy: bool, response_type: type[Message] | None, now_epoch_ms: int
) -> common_pb2.GetOperationResponse:
    """GetOperation's answer for `key`. `busy`: a call with the key is being served; `response_type`: the message of
    the record's method, to name in the Any."""
    if record is None:
        if busy:
            return common_pb2.GetOperationResponse(
                state=common_pb2.OPERATION_STATE_UNKNOWN,
                message="a call with this key is being served and has no outcome yet",
            )
        return common_pb2.GetOperationResponse(state=common_pb2.OPERATION_STATE_NOT_FOUND)
    if record.in_progress:
        return common_pb2.GetOperationResponse(
            state=common_pb2.OPERATION_STATE_IN_PROGRESS,
            poll_after_ms=poll_after_ms(record, now_epoch_ms),
            method=record.method,
        )
    answer = record.final
    reply = common_pb2.GetOperationResponse(
        state=common_pb2.OPERATION_STATE_DONE, code=answer.code, message=answer.message, method=record.method
    )
    if answer.ok and response_type is not None:
        reply.response.type_url = TYPE_URL_PREFIX + response_type.DESCRIPTOR.full_name
        reply.response.value = answer.response
    return reply


class OperationTimers:
    """One loop timer per operation in progress that will finish; `fire(key)` runs when it is due (or about to be)."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._handles: dict[str, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._handles)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """From now on `schedule` arms timers (not before: completing needs the store attached to its writer)."""
        self._loop = loop

    def schedule(self, key: str, delay_ms: int) -> None:
        if self._loop is None:
            return  # not started, or stopped: start() re-arms from the in-progress records
        self.cancel(key)
        self._handles[key] = self._loop.call_later(max(0, delay_ms) / 1000, self._run, key)

    def cancel(self, key: str) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def stop(self) -> None:
        """Cancels every timer; what was due and not finished finishes on the next start."""
        self._loop = None
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _run(self, key: str) -> None:
        self._handles.pop(key, None)
        self._fire(key)
