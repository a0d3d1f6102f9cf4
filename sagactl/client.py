"""The gRPC side of sagactl: one channel to the router, and one place that turns a failed call into a message and an
exit code (CallFailed), so no command prints a traceback for a server's answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from common.tls import TlsFiles, sync_channel
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

EXIT_OK = 0
EXIT_SAGA_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_REFUSED = 5

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_EXIT_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
}


class UsageError(Exception):
    """Bad arguments that argparse cannot catch by itself; the message names the argument."""


class CallFailed(Exception):
    """A call did not succeed: what to tell the user and which exit code to return."""

    def __init__(self, message: str, exit_code: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code


def _router_answers(channel: grpc.Channel) -> bool:
    """Whether the router itself is reachable (an UNAVAILABLE may be a shard's behind it)."""
    try:
        grpc.channel_ready_future(channel).result(timeout=1.0)
    except grpc.FutureTimeoutError:
        return False
    return True


def _failure(router: str, channel: grpc.Channel, what: str, e: grpc.RpcError) -> CallFailed:
    code = e.code()
    details = e.details() or ""
    if code in _UNREACHABLE and not _router_answers(channel):
        message = (
            f"cannot reach the router at {router} ({code.name}: {details}).\n"
            "Is it running (`make run`)? Point sagactl elsewhere with --router HOST:PORT or SAGA_ROUTER."
        )
        return CallFailed(message, EXIT_UNREACHABLE, code.name)
    if code is grpc.StatusCode.UNAVAILABLE:
        message = f"{what}: the router answered UNAVAILABLE (a shard behind it may be down; retry later): {details}"
        return CallFailed(message, EXIT_UNREACHABLE, code.name)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CallFailed(f"{what}: no answer in time ({details}); raise --timeout", EXIT_UNREACHABLE, code.name)
    return CallFailed(f"{what}: {code.name}: {details}", _EXIT_BY_CODE.get(code, EXIT_REFUSED), code.name)


class Client:
    def __init__(self, router: str, timeout_s: float, tls: TlsFiles | None = None) -> None:
        """tls: mutual TLS with these files; None or empty: plaintext (refused off loopback without tls.insecure:
        common.tls.PlaintextRefused)."""
        self.router = router
        self.timeout_s = timeout_s
        self._channel = sync_channel(router, tls or TlsFiles())
        self.saga = saga_pb2_grpc.SagaCoordinatorStub(self._channel)
        self.admin = saga_pb2_grpc.SagaAdminStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def call(self, what: str, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise _failure(self.router, self._channel, what, e) from None

    def watch(self, order_id: str) -> Iterator[saga_pb2.SagaUpdate]:
        """The saga's updates until it ends (no deadline: a watch lasts as long as the saga)."""
        stream = self.saga.WatchSaga(saga_pb2.WatchSagaRequest(order_id=order_id))
        try:
            yield from stream
        except grpc.RpcError as e:
            raise _failure(self.router, self._channel, f"watch {order_id}", e) from None
        finally:
            stream.cancel()

    def list_sagas(self, state: int, page_size: int, limit: int | None) -> tuple[list[saga_pb2.Saga], str]:
        """Sagas newest first, following pages until limit (None: one page). Returns them and the next page token."""
        out: list[saga_pb2.Saga] = []
        token = ""
        while True:
            size = page_size if limit is None else min(page_size, limit - len(out))
            req = saga_pb2.ListSagasRequest(state=state, page_size=size, page_token=token)
            resp = self.call("list", self.saga.ListSagas, req)
            out.extend(resp.sagas)
            token = resp.next_page_token
            if limit is None or not token or len(out) >= limit:
                return out, token
