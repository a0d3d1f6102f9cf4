"""What a failed call raises: one hierarchy, and one table (ERROR_BY_CODE) from gRPC status codes to it.

    SagaError                      every failure of a SagaClient call; .code, .details, .retryable
    ├── InvalidRequest             INVALID_ARGUMENT; .field_violations from google.rpc.BadRequest, .field the first
    ├── AlreadyExists              ALREADY_EXISTS: the order id is taken by a different order
    ├── NotFound                   NOT_FOUND: no saga (or dead letter) for that order id
    ├── FailedPrecondition         FAILED_PRECONDITION: e.g. resolving a saga that is not dead-lettered
    ├── Unauthenticated            UNAUTHENTICATED: no (valid) client certificate or token
    ├── PermissionDenied           PERMISSION_DENIED: the caller's role may not make this call
    ├── DeadlineExceeded           DEADLINE_EXCEEDED: no answer within the call's timeout
    ├── Unavailable                UNAVAILABLE (retryable): the router or a shard behind it is down
    ├── ResourceExhausted          RESOURCE_EXHAUSTED (retryable): overloaded; .retry_after_s from "retry-after-ms"
    └── ServerError                anything else (INTERNAL, UNKNOWN, ...)

`retryable` says whether the same request may simply be sent again (place_order does so itself, see RetryPolicy).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "ERROR_BY_CODE",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SagaError",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "retry_after_s",
]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as the server named it (google.rpc.BadRequest)."""

    field: str
    """The field's path, e.g. "payment_info.currency"."""
    description: str
    """What is wrong with it."""


class SagaError(Exception):
    """A call failed with a gRPC status other than OK."""

    retryable = False

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidRequest(SagaError):
    """The request was refused as malformed; field_violations names the fields (empty if the server named none)."""

    def __init__(self, code: grpc.StatusCode, details: str, field_violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(code, details)
        self.field_violations = field_violations

    @property
    def field(self) -> str | None:
        """The first bad field, or None."""
        return self.field_violations[0].field if self.field_violations else None


class AlreadyExists(SagaError):
    """The order id belongs to a saga with a different payload: choose a new order id."""


class NotFound(SagaError):
    """Nothing with that order id."""


class FailedPrecondition(SagaError):
    """The saga is not in a state that allows the call."""


class Unauthenticated(SagaError):
    """No credentials, or ones the router does not accept."""


class PermissionDenied(SagaError):
    """Authenticated, but the caller's role does not allow the call."""


class DeadlineExceeded(SagaError):
    """No answer in time. For place_order the saga may still be running: ask get_saga, or place it again."""


class Unavailable(SagaError):
    """The router, or the shard owning the order, cannot be reached right now."""

    retryable = True


class ResourceExhausted(SagaError):
    """Overloaded; retry after retry_after_s (the server's hint) or later."""

    retryable = True

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_s: float | None = None) -> None:
        super().__init__(code, details)
        self.retry_after_s = retry_after_s


class ServerError(SagaError):
    """Any other status (INTERNAL, UNKNOWN, ...)."""


ERROR_BY_CODE: dict[grpc.StatusCode, type[SagaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}
"""The one mapping from a status code to the error raised; a code not listed raises ServerError."""

RETRYABLE_CODES = frozenset(code for code, cls in ERROR_BY_CODE.items() if cls.retryable)


def retry_after_s(e: grpc.RpcError) -> float | None:
    """The server's "retry-after-ms" trailer in seconds, or None if absent or not a number."""
    for key, value in e.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None


def _field_violations(e: grpc.RpcError) -> tuple[FieldViolation, ...]:
    try:
        status = rpc_status.from_call(e)  # a failed call's error (sync or aio) carries the trailers from_call reads
    except ValueError:  # details that do not match the status: ignore them, keep the message
        return ()
    out: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return tuple(out)


def from_rpc_error(e: grpc.RpcError) -> SagaError:
    """The SagaError for a failed call of either grpc API (ERROR_BY_CODE)."""
    code = e.code()
    details = e.details() or ""
    cls = ERROR_BY_CODE.get(code, ServerError)
    if cls is InvalidRequest:
        return InvalidRequest(code, details, _field_violations(e))
    if cls is ResourceExhausted:
        return ResourceExhausted(code, details, retry_after_s(e))
    return cls(code, details)
