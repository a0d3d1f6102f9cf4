"""Errors the stubs answer with, and the one place they become gRPC statuses.

    StubError(code, message)             any non-OK answer: replayed business rejections, ABORTED for a tombstoned
    │                                    key (with google.rpc.ErrorInfo reason TOMBSTONED: final), ALREADY_EXISTS for
    │                                    a reused key, injected faults
    ├── InvalidArgument(field, message)  INVALID_ARGUMENT with a google.rpc.BadRequest naming the field
    └── StoreFailed                      the SQLite writer failed: UNAVAILABLE until the process is restarted

Business rejections are not raised where they are decided: they are recorded answers (see keys.Answer), turned into a
StubError only when sent, so a replay sends exactly the same code and message.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from common.rpc_errors import SHOP_DOMAIN, TOMBSTONED, bad_request, with_reason

TOMBSTONED_MESSAGE = "idempotency key tombstoned by compensation"


class StubError(Exception):
    """A non-OK answer to a call."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(StubError):
    """A malformed request; `field` names the offending request field (or metadata key)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")
        self.field = field
        self.description = message


class StoreFailed(StubError):
    """The durable store can no longer commit; memory may be ahead of disk, so nothing more is answered."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


def status_code(name: str) -> grpc.StatusCode:
    """The StatusCode called `name` ("UNAVAILABLE"); KeyError if there is none."""
    return grpc.StatusCode[name]


async def abort(context: grpc.aio.ServicerContext, error: StubError) -> NoReturn:
    """Ends the call with `error`: the only place our errors become gRPC statuses."""
    if isinstance(error, InvalidArgument):
        await context.abort_with_status(bad_request(error.field, error.description))
    if error.code is grpc.StatusCode.ABORTED and error.message == TOMBSTONED_MESSAGE:
        # Final (DESIGN contract 3): the caller must not retry it, unlike a plain ABORTED.
        await context.abort_with_status(with_reason(error.code, error.message, TOMBSTONED, SHOP_DOMAIN))
    await context.abort(error.code, error.message)
    raise AssertionError("unreachable: context.abort raises")
