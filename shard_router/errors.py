"""What the router answers when a call does not succeed, mapped to gRPC in one place.

    RouterError              base: status code, details and trailing metadata, sent to the caller as they are
    ├── ShardStatus          a shard's own non-OK answer (or its channel's, when the shard is unreachable),
    │                        relayed unchanged: google.rpc.Status details ("grpc-status-details-bin") and
    │                        "retry-after-ms" included
    ├── RingDisagreement     UNAVAILABLE for a new order while a shard refuses the router's ring as a conflict
    └── InvalidArgument      bad input the router checks itself (page_size, page_token), the field named in
                             google.rpc.BadRequest details, as a shard would

When the router asks a shard whether it holds an order (shard_router.relay.routing), the answer's code is read through
one table, OUTCOMES: only OK and NOT_FOUND say where the saga is; a few codes are the shard's final word on the request;
every other code (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, ...) leaves open whether the shard holds
it, so the router must not send the order anywhere else."""

from __future__ import annotations

import enum

import grpc

from common.rpc_errors import bad_request

Metadata = tuple[tuple[str, str | bytes], ...]


class RouterError(Exception):
    """A non-OK answer for the caller."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Metadata = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class ShardStatus(RouterError):
    """A shard answered (or its channel failed) with a non-OK status."""

    def __init__(self, shard_id: str, code: grpc.StatusCode, details: str, trailing_metadata: Metadata = ()) -> None:
        super().__init__(code, details, trailing_metadata)
        self.shard_id = shard_id

    def with_context(self, prefix: str) -> ShardStatus:
        """The same status with a hint for operators in front of the details."""
        return ShardStatus(self.shard_id, self.code, f"{prefix}: {self.details}", self.trailing_metadata)


class RingDisagreement(RouterError):
    """The router's ring history and a shard's hold different placements under one epoch number: it creates no saga
    (UNAVAILABLE, so clients retry) until it agrees with the shards again (shard_router.ring.reload)."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, details)


class InvalidArgument(RouterError):
    """Bad input caught by the router; names the field like a shard does (the same common.rpc_errors status)."""

    def __init__(self, field: str, description: str) -> None:
        status = bad_request(field, description)
        super().__init__(status.code, status.details, status.trailing_metadata)


class Outcome(enum.Enum):
    """What a shard's answer to "do you hold this order?" tells the router."""

    FOUND = "found"
    """The shard holds the saga."""
    ABSENT = "absent"
    """The shard does not hold it."""
    FINAL = "final"
    """The shard judged the request itself (bad input, refused, wrong state): relay its answer."""
    UNKNOWN = "unknown"
    """No answer we can act on: the shard may hold the saga."""


OUTCOMES: dict[grpc.StatusCode, Outcome] = {
    grpc.StatusCode.OK: Outcome.FOUND,
    grpc.StatusCode.NOT_FOUND: Outcome.ABSENT,
    grpc.StatusCode.INVALID_ARGUMENT: Outcome.FINAL,
    grpc.StatusCode.FAILED_PRECONDITION: Outcome.FINAL,
    grpc.StatusCode.ALREADY_EXISTS: Outcome.FINAL,
    grpc.StatusCode.OUT_OF_RANGE: Outcome.FINAL,
    grpc.StatusCode.PERMISSION_DENIED: Outcome.FINAL,
    grpc.StatusCode.UNAUTHENTICATED: Outcome.FINAL,
    grpc.StatusCode.UNIMPLEMENTED: Outcome.FINAL,
}
"""Codes not listed (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, ...) are UNKNOWN."""


def outcome(code: grpc.StatusCode) -> Outcome:
    return OUTCOMES.get(code, Outcome.UNKNOWN)
