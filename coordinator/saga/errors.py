"""Every error the coordinator raises or classifies, with its retry semantics, mapped to gRPC in one place.

    SagaError                       base; .status is what a client of ours sees
    ├── InvalidRequest              bad input; names the field (INVALID_ARGUMENT + google.rpc.BadRequest)
    ├── PayloadMismatch             same order_id, different payload (ALREADY_EXISTS)
    ├── Overloaded                  in-flight limit reached; carries retry_after_ms (RESOURCE_EXHAUSTED)
    ├── SagaNotFound                no saga for that order (NOT_FOUND)
    ├── WrongState                  admin action on a saga in the wrong state (FAILED_PRECONDITION)
    ├── RingRefused                 routed by a ring this shard cannot serve the call under (FAILED_PRECONDITION;
    │                               coordinator.ring.ownership)
    ├── JournalUnavailable          the journal cannot commit (disk full, I/O error): nothing acknowledged (UNAVAILABLE)
    └── ShuttingDown                the shard is stopping (UNAVAILABLE)

Replies of downstream services are classified by DOWNSTREAM_CLASS, one table: a CallClass says whether to retry and
whether the call may have taken effect (RETRY_IF_NOT_APPLIED: which unknown outcomes a service's "never applied" turns
back into retries). What a reply says is kept only as CallResult.summary: the status code the engine
classified, then a bounded detail with anything that looks like a card number or a token scrubbed out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc


class SagaError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata the status carries (a retry hint, a refusal reason)."""
        return ()


class InvalidRequest(SagaError):
    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class PayloadMismatch(SagaError):
    status = grpc.StatusCode.ALREADY_EXISTS


class Overloaded(SagaError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def trailing(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", str(self.retry_after_ms)),)


class SagaNotFound(SagaError):
    status = grpc.StatusCode.NOT_FOUND


class WrongState(SagaError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class JournalUnavailable(SagaError):
    status = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(SagaError):
    status = grpc.StatusCode.UNAVAILABLE


class CallClass(enum.Enum):
    """What a downstream reply means for the saga."""

    OK = "ok"
    # Try again with the same key: the service may or may not have applied it.
    TRANSIENT = "transient"
    # The service refused and applied nothing (business rejection, bad request): do not retry, do not compensate.
    REJECTED = "rejected"
    # Do not retry, but the effect is unknown: compensate this step too.
    UNKNOWN = "unknown"

    @property
    def retryable(self) -> bool:
        return self is CallClass.TRANSIENT

    @property
    def may_have_applied(self) -> bool:
        return self is not CallClass.REJECTED


_C = grpc.StatusCode
DOWNSTREAM_CLASS: dict[grpc.StatusCode, CallClass] = {
    _C.OK: CallClass.OK,
    _C.UNAVAILABLE: CallClass.TRANSIENT,
    _C.DEADLINE_EXCEEDED: CallClass.TRANSIENT,
    _C.RESOURCE_EXHAUSTED: CallClass.TRANSIENT,
    _C.ABORTED: CallClass.TRANSIENT,
    _C.FAILED_PRECONDITION: CallClass.REJECTED,
    _C.INVALID_ARGUMENT: CallClass.REJECTED,
    _C.OUT_OF_RANGE: CallClass.REJECTED,
    _C.NOT_FOUND: CallClass.REJECTED,
    _C.PERMISSION_DENIED: CallClass.REJECTED,
    _C.UNAUTHENTICATED: CallClass.REJECTED,
    _C.UNIMPLEMENTED: CallClass.REJECTED,
    # A key reused with another request, or a server bug: whatever happened under that key may have applied.
    _C.ALREADY_EXISTS: CallClass.UNKNOWN,
    _C.INTERNAL: CallClass.UNKNOWN,
    _C.UNKNOWN: CallClass.UNKNOWN,
    _C.DATA_LOSS: CallClass.UNKNOWN,
    _C.CANCELLED: CallClass.UNKNOWN,
}


RETRY_IF_NOT_APPLIED = frozenset({_C.INTERNAL, _C.UNKNOWN, _C.CANCELLED})
"""UNKNOWN-class codes that are retried after all when the service, asked (GetOperation), has no record of the call.
ALREADY_EXISTS (the key was used for another request) and DATA_LOSS are not: the same call would meet the same
fault."""

_CLASS_BY_NAME: dict[str, CallClass] = {code.name: cls for code, cls in DOWNSTREAM_CLASS.items()}


def classify(code: grpc.StatusCode) -> CallClass:
    return DOWNSTREAM_CLASS.get(code, CallClass.UNKNOWN)


def may_have_applied(code_name: str, rejected: frozenset[str] | None = None) -> bool:
    """Whether a call that ended with the status named `code_name` (as journaled) may have taken effect. rejected: the
    codes the step's definition classifies as rejections (None: the default table's)."""
    if rejected is not None:
        return code_name not in rejected
    return _CLASS_BY_NAME.get(code_name, CallClass.UNKNOWN).may_have_applied


def step_classes(codes: Mapping[str, tuple[str, ...]]) -> dict[grpc.StatusCode, CallClass] | None:
    """A step's classification: DOWNSTREAM_CLASS with its definition's `codes:` laid over; None when it has none."""
    if not codes:
        return None
    table = dict(DOWNSTREAM_CLASS)
    for cls_name, names in codes.items():
        for name in names:
            table[grpc.StatusCode[name]] = CallClass(cls_name)
    return table


def rejected_codes(classes: Mapping[grpc.StatusCode, CallClass] | None) -> frozenset[str] | None:
    """The names of the codes classified as rejections (None for the default table)."""
    if classes is None:
        return None
    return frozenset(code.name for code, cls in classes.items() if cls is CallClass.REJECTED)


DETAIL_MAX_CHARS = 200
"""Longest downstream error text kept in the journal and shown to users: a service's message is not ours to store."""

# A run of 12+ digits (spaces or dashes allowed between them) looks like a card number; tok_... / long opaque strings
# look like payment tokens or secrets. Either is replaced, whatever the service meant by it.
_CARD_LIKE = re.compile(r"\b\d(?:[ -]?\d){11,18}\b")
_TOKEN_LIKE = re.compile(r"\b(?:tok|pm|card|sk|pk)_[A-Za-z0-9_-]+|\b[A-Za-z0-9_-]{40,}\b")


def scrub(text: str, limit: int = DETAIL_MAX_CHARS) -> str:
    """`text` bounded to `limit` characters, with card-number-like and token-like runs replaced by [redacted]."""
    cleaned = _TOKEN_LIKE.sub("[redacted]", _CARD_LIKE.sub("[redacted]", text))
    cleaned = " ".join(cleaned.split())  # one line: connection errors span several
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class CallResult:
    """The reply of one downstream attempt: a status code and its message. An OK reply may say the service accepted
    the call and will finish it later (in_progress: a long-running operation, to be asked about with GetOperation)."""

    code: grpc.StatusCode
    message: str = ""
    in_progress: bool = False
    poll_after_ms: int = 0
    """With in_progress: when the service suggests asking (0: no suggestion)."""
    final: bool = False
    """The service said the answer is final whatever its code (google.rpc.ErrorInfo reason TOMBSTONED on ABORTED:
    the forward call's compensation came first, DESIGN contract 3): not retried, and nothing was applied."""
    not_applied: bool = False
    """Asked about afterwards (GetOperation), the service had no record of the call: whatever its code said, nothing
    was applied, and the same call may be sent again with the same key (transient)."""
    classes: Mapping[grpc.StatusCode, CallClass] | None = None
    """The step's own classification (its definition's `codes:`), laid over DOWNSTREAM_CLASS; None: the default."""
    response: Any = None
    """An OK reply's message, kept when a later request reads the step's output (Step.output_used)."""

    @property
    def cls(self) -> CallClass:
        if self.final:
            return CallClass.REJECTED
        if self.not_applied:
            return CallClass.TRANSIENT
        if self.classes is not None:
            return self.classes.get(self.code, CallClass.UNKNOWN)
        return classify(self.code)

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    @property
    def note(self) -> str:
        """summary, and what asking the service added to it."""
        return f"{self.summary} (not applied, GetOperation: NOT_FOUND)" if self.not_applied else self.summary

    @classmethod
    def failed_to_call(cls, e: Exception) -> CallResult:
        """An attempt that raised instead of answering (a broken channel, a bug): transient, and only the exception's
        type is kept (its text may quote the request)."""
        return cls(grpc.StatusCode.UNAVAILABLE, f"call failed: {type(e).__name__}")

    @property
    def summary(self) -> str:
        """The classified code first, then the service's bounded, scrubbed text: "UNAVAILABLE: failed to connect"."""
        detail = scrub(self.message)
        return f"{self.code.name}: {detail}" if detail else self.code.name


class OperationState(enum.Enum):
    """What a service says became of a call (shop.v1 GetOperation)."""

    UNKNOWN = "UNKNOWN"
    """It cannot say, or could not be asked (unreachable, too old a service, a failed call)."""
    NOT_FOUND = "NOT_FOUND"
    """No call with this key was applied or recorded."""
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    """Finished: result holds the call's final answer (OK: applied)."""


@dataclass(frozen=True, slots=True)
class OperationAnswer:
    state: OperationState
    result: CallResult = CallResult(grpc.StatusCode.UNKNOWN)
    """DONE: the call's final answer. UNKNOWN: why (the failed GetOperation's code and message, if it failed)."""
    poll_after_ms: int = 0
    """IN_PROGRESS: when the service suggests asking again (0: no suggestion)."""

    @property
    def verdict(self) -> str:
        """What it means for the saga, as the metrics count it: applied (done, OK), rejected (done, refused: nothing
        applied), failed (done with another error), in_progress, not_found (never applied), unknown (cannot say)."""
        if self.state is OperationState.DONE:
            if self.result.ok:
                return "applied"
            return "rejected" if self.result.cls is CallClass.REJECTED else "failed"
        return str(self.state.value).lower()

    @property
    def label(self) -> str:
        """How the journal names it: "DONE:OK", "DONE:FAILED_PRECONDITION", "NOT_FOUND", ..."""
        if self.state is OperationState.DONE:
            return f"DONE:{self.result.code.name}"
        return str(self.state.value)
