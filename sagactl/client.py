"""The gRPC side of sagactl: one channel to the router, and one place that turns a failed call into a message and an
exit code (CallFailed), so no command prints a traceback for a server's answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
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
    if code is grpc.StatusCode.UNAUTHENTICATED:
        hint = "give a client certificate (--tls-cert/--tls-key/--tls-ca) or a token (--token-file) the router knows"
        return CallFailed(f"{what}: UNAUTHENTICATED: {details}; {hint}", EXIT_REFUSED, code.name)
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


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (the one credentials factory of sagactl)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), self._header))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def read_token(path: Path) -> str:
    """The bearer token in a file (first line, whitespace stripped); UsageError naming the file, never the token."""
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--token-file: cannot read {path}: {getattr(e, 'strerror', None) or 'not text'}") from None
    token = lines[0].strip() if lines else ""
    if not token or any(c.isspace() for c in token):
        raise UsageError(f"--token-file: {path} holds no token (one line: the token itself)")
    return token


class Client:
    def __init__(self, router: str, timeout_s: float, tls: TlsFiles | None = None, token: str | None = None) -> None:
        """tls: mutual TLS with these files; None or empty: plaintext (refused off loopback without tls.insecure:
        common.tls.PlaintextRefused). token: a bearer token sent with every call (the router's auth policy names
        who it is)."""
        self.router = router
        self.timeout_s = timeout_s
        self._raw_channel = sync_channel(router, tls or TlsFiles())
        self._channel = self._raw_channel
        if token is not None:
            self._channel = grpc.intercept_channel(self._raw_channel, _Bearer(token))
        self.saga = saga_pb2_grpc.SagaCoordinatorStub(self._channel)
        self.admin = saga_pb2_grpc.SagaAdminStub(self._channel)

    def close(self) -> None:
        self._raw_channel.close()

    def call(self, what: str, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise _failure(self.router, self._raw_channel, what, e) from None

    def watch(self, order_id: str) -> Iterator[saga_pb2.SagaUpdate]:
        """The saga's updates until it ends (no deadline: a watch lasts as long as the saga)."""
        stream = self.saga.WatchSaga(saga_pb2.WatchSagaRequest(order_id=order_id))
        try:
            yield from stream
        except grpc.RpcError as e:
            raise _failure(self.router, self._raw_channel, f"watch {order_id}", e) from None
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
