"""Fake downstream services generated from the definition's descriptors: the Caller the definition tools run the real
engine against (coordinator.tools.sandbox).

Every method a definition names answers OK with a default instance of its response type, unless a failure is injected
for the step's forward call (Outcome). The services keep the shop.v1 contract (protos/shop/v1/common.proto) in a
ledger, as the development stubs do:

- a key seen before returns its first answer and applies nothing new;
- a compensation names the forward call it undoes by the request's `forward_idempotency_key` field; a key that was
  never applied is tombstoned instead (and a forward call arriving later with it is refused with ABORTED). A
  compensation request without that field undoes its own step's forward call (the key's convention,
  `<saga_id>/<step id>/forward`); a compensation that calls its step's forward method again applies again;
- GetOperation reports a key's final answer (DONE), NOT_FOUND for a key never answered, or UNKNOWN when the injected
  outcome says the service cannot tell.

The ledger (effects, undos, tombstones) is what verify checks its invariants on; the call log is what plan prints.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from common.definitions.model import Action, Call, Values, idempotency_key
from common.definitions.model import Step as StepDef
from coordinator.saga.errors import CallResult, OperationAnswer, OperationState
from coordinator.tools.clock import VirtualClock
from coordinator.tools.messages import masked

UNDO_KEY_FIELD = "forward_idempotency_key"
"""The request field by which a compensation names the forward call it undoes (shop.v1.CompensationRequest)."""


class Outcome(enum.StrEnum):
    """What a step's forward call meets, injected."""

    OK = "ok"
    REJECTED = "rejected"
    """FAILED_PRECONDITION: a business refusal; nothing applied, the key's final answer."""
    UNKNOWN = "unknown"
    """INTERNAL, and GetOperation cannot say (UNKNOWN): the outcome stays unknown; nothing applied."""
    TIMEOUT = "timeout"
    """DEADLINE_EXCEEDED at once, every attempt (a deadline the service reports); nothing applied, GetOperation
    NOT_FOUND."""
    HANG = "hang"
    """No answer: every attempt ends at its timeout with DEADLINE_EXCEEDED; nothing applied."""
    APPLIED_THEN_LOST = "applied-then-lost"
    """Applied, but the reply is lost: the attempt ends at its timeout with DEADLINE_EXCEEDED; GetOperation says DONE
    with OK."""
    ACCEPTED_THEN_FAILED = "accepted-then-failed"
    """Long-running: accepted (in progress, nothing applied), then GetOperation says DONE with FAILED_PRECONDITION.
    Only for a method whose response has an `operation` field."""

    def applies_to(self, step: StepDef) -> bool:
        return self is not Outcome.ACCEPTED_THEN_FAILED or step.call.long_running


@dataclass
class Effect:
    """A forward effect a service applied: by a step's forward call, or by a compensation that applied instead of
    undoing (it called a forward method)."""

    saga_id: str
    step_id: str
    action: Action
    """The engine's action of the call that applied it."""
    method: str
    key: str
    undone_by: list[str] = field(default_factory=list)
    """Keys of the compensations that undid it (exactly one when undone as it should)."""


@dataclass
class Tombstone:
    saga_id: str
    step_id: str
    key: str
    """The forward key named, never applied."""
    by: str
    """The compensation key that named it."""


@dataclass
class CallRecord:
    """One call the coordinator made (a GetOperation too), as plan prints it."""

    at_ms: int
    """Virtual time since the sandbox started."""
    saga_id: str
    step_id: str
    action: Action
    method: str
    """"package.Service/Method"."""
    request: dict[str, Any]
    """The request as JSON data, payment fields masked."""
    key: str
    """The idempotency key sent (for GetOperation: the key asked about)."""
    attempt: int
    """Calls with this key and method so far, this one included."""
    result: str = ""
    """The answer: a status code name, with what it meant ("OK undone", "DEADLINE_EXCEEDED: ...")."""
    asks: bool = False
    """A GetOperation about `key`, not a call of the step's method."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "step": self.step_id,
            "action": "get_operation" if self.asks else self.action.label,
            "method": self.method,
            "request": self.request,
            "idempotency_key": self.key,
            "attempt": self.attempt,
            "result": self.result,
        }


class FakeServices:
    """The Caller of a sandboxed shard. `failures`: step id -> Outcome of its forward call, for the saga being run."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.failures: dict[str, Outcome] = {}
        self.then: dict[str, tuple[Outcome, ...]] = {}
        """Step id -> the outcomes of its forward call's later attempts (2nd, 3rd, ...; the last one repeats); a
        step with none meets its failure on every attempt."""
        self.calls: list[CallRecord] = []
        self.effects: list[Effect] = []
        self.tombstones: list[Tombstone] = []
        self._applied: dict[str, Effect] = {}
        self._answers: dict[str, CallResult] = {}
        self._unknown: set[str] = set()
        self._attempts: Counter[tuple[str, str]] = Counter()

    # ---- the Caller protocol ----------------------------------------------------------------------------------------

    async def call(self, values: Values, step: StepDef, action: Action, timeout_s: float) -> CallResult:
        forward_key = idempotency_key(values.saga_id, step.id, Action.FORWARD)
        if action is Action.FORWARD:
            call, key = step.call, forward_key
        else:
            assert step.compensation is not None, f"{step.id} has no compensation"
            call, key = step.compensation, idempotency_key(values.saga_id, step.id, action)
        request = call.build(values, forward_key)
        self._attempts[(key, call.method)] += 1
        record = CallRecord(
            self._clock.elapsed_ms,
            values.saga_id,
            step.id,
            action,
            call.method,
            masked(request),
            key,
            self._attempts[(key, call.method)],
        )
        self.calls.append(record)
        result, note = await self._answer(values, step, action, call, request, key, timeout_s)
        record.result = _describe(result, note)
        return result

    async def get_operation(self, values: Values, step: StepDef, action: Action, timeout_s: float) -> OperationAnswer:
        key = idempotency_key(values.saga_id, step.id, action)
        method = step.get_operation.lstrip("/") or f"{step.call.service}/GetOperation"
        self._attempts[(key, method)] += 1
        record = CallRecord(
            self._clock.elapsed_ms,
            values.saga_id,
            step.id,
            action,
            method,
            {"idempotency_key": key},
            key,
            self._attempts[(key, method)],
            asks=True,
        )
        self.calls.append(record)
        answer = self._operation(step, key)
        record.result = answer.label
        return answer

    async def close(self) -> None:
        return None

    # ---- the services' behaviour ------------------------------------------------------------------------------------

    def _outcome(self, step_id: str, attempt: int) -> Outcome:
        """What attempt `attempt` (from 1) of the step's forward call meets: its failure, then its --then sequence."""
        first = self.failures.get(step_id, Outcome.OK)
        later = self.then.get(step_id, ())
        if attempt <= 1 or not later:
            return first
        return later[min(attempt - 2, len(later) - 1)]

    def _operation(self, step: StepDef, key: str) -> OperationAnswer:
        if not step.get_operation:
            return OperationAnswer(OperationState.UNKNOWN, CallResult(grpc.StatusCode.UNIMPLEMENTED, "no GetOperation"))
        if key in self._unknown:
            return OperationAnswer(OperationState.UNKNOWN)
        found = self._answers.get(key)
        if found is not None:
            return OperationAnswer(OperationState.DONE, found)
        if any(t.key == key for t in self.tombstones):
            return OperationAnswer(OperationState.DONE, CallResult(grpc.StatusCode.ABORTED, "tombstoned"))
        return OperationAnswer(OperationState.NOT_FOUND)

    async def _answer(
        self, values: Values, step: StepDef, action: Action, call: Call, request: Any, key: str, timeout_s: float
    ) -> tuple[CallResult, str]:
        found = self._answers.get(key)
        if found is not None:
            return found, "the key's first answer"
        outcome = self._outcome(step.id, self._attempts[(key, call.method)]) if action is Action.FORWARD else Outcome.OK
        if outcome is Outcome.OK:
            self._unknown.discard(key)  # a later attempt answered: the service can say again
        if outcome is Outcome.REJECTED:
            result = self._answers[key] = CallResult(grpc.StatusCode.FAILED_PRECONDITION, "rejected (injected)")
            return result, ""
        if outcome is Outcome.UNKNOWN:
            self._unknown.add(key)
            return CallResult(grpc.StatusCode.INTERNAL, "outcome unknown (injected)"), ""
        if outcome is Outcome.TIMEOUT:
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (injected)"), ""
        if outcome is Outcome.HANG:
            await self._clock.sleep(timeout_s)
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s:g} s (injected)"), ""
        if outcome is Outcome.ACCEPTED_THEN_FAILED and call.long_running:
            self._answers[key] = CallResult(grpc.StatusCode.FAILED_PRECONDITION, "failed after acceptance (injected)")
            return CallResult(grpc.StatusCode.OK, in_progress=True), "accepted, in progress"
        result, note = self._apply(values, step, action, call, request, key)
        if outcome is Outcome.APPLIED_THEN_LOST:
            await self._clock.sleep(timeout_s)
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "reply lost (injected)"), f"{note}, reply lost"
        return result, note

    def _apply(
        self, values: Values, step: StepDef, action: Action, call: Call, request: Any, key: str
    ) -> tuple[CallResult, str]:
        response = call.response_type()
        target = _undoes(values, step, action, call, request)
        if target is None:
            if any(t.key == key for t in self.tombstones):
                return CallResult(grpc.StatusCode.ABORTED, "tombstoned", final=True), ""
            effect = Effect(values.saga_id, step.id, action, call.method, key)
            self.effects.append(effect)
            self._applied[key] = effect
            note = "applied"
        elif (effect_undone := self._applied.get(target)) is not None:
            effect_undone.undone_by.append(key)
            _set(response, "undone", True)
            own = target == idempotency_key(values.saga_id, step.id, Action.FORWARD)
            note = "undone" if own else f"undone {target}"
        else:
            self.tombstones.append(Tombstone(values.saga_id, step.id, target, key))
            _set(response, "tombstoned", True)
            note = f"tombstoned {target!r}: never applied"
        result = self._answers[key] = CallResult(grpc.StatusCode.OK, response=response)
        return result, note


def _undoes(values: Values, step: StepDef, action: Action, call: Call, request: Any) -> str | None:
    """The forward key a call undoes; None for a call that applies an effect."""
    if UNDO_KEY_FIELD in call.request_type.DESCRIPTOR.fields_by_name:
        return str(getattr(request, UNDO_KEY_FIELD))
    if action is Action.COMPENSATE and call.path != step.call.path:
        return idempotency_key(values.saga_id, step.id, Action.FORWARD)
    return None


def _set(message: Any, name: str, value: Any) -> None:
    if name in message.DESCRIPTOR.fields_by_name:
        setattr(message, name, value)


def _describe(result: CallResult, note: str) -> str:
    text = result.summary + (" in progress" if result.in_progress else "")
    return f"{text} ({note})" if note else text
