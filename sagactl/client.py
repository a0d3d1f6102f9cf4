"""sagactl's side of the Python client library: a sagaclient.SyncSagaClient to the router, and the one place that turns
its typed errors (sagaclient.errors) into a message and an exit code (CallFailed), so no command prints a traceback
for a server's answer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from common.tls import TlsFiles
from protos.saga.v1 import saga_pb2
from sagaclient import (
    NO_RETRY,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    SagaError,
    SyncSagaClient,
    Unauthenticated,
    Unavailable,
    read_token_file,
)

EXIT_OK = 0
EXIT_SAGA_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_FOUND = 4
EXIT_REFUSED = 5

_EXIT_BY_ERROR: dict[type[SagaError], int] = {NotFound: EXIT_NOT_FOUND, InvalidRequest: EXIT_USAGE}
"""Beside Unavailable and DeadlineExceeded (EXIT_UNREACHABLE, with a hint of their own): any other SagaError is a
refusal (FailedPrecondition, AlreadyExists, ResourceExhausted, Unauthenticated, PermissionDenied, ...), EXIT_REFUSED."""
ROUTER_PROBE_S = 1.0
"""How long an unreachable-looking failure waits for a connection to the router itself, to tell it from a shard's."""


class UsageError(Exception):
    """Bad arguments that argparse cannot catch by itself; the message names the argument."""


class CallFailed(Exception):
    """A call did not succeed: what to tell the user and which exit code to return."""

    def __init__(self, message: str, exit_code: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code


def read_token(path: Path) -> str:
    """The bearer token in --token-file; UsageError naming the file, never the token."""
    try:
        return read_token_file(path)
    except ValueError as e:
        raise UsageError(f"--token-file: {e}") from None


class Client:
    """The router as sagactl's commands see it: `sagas` makes the calls (sagaclient's methods), `calling(what)` turns
    their failures into CallFailed."""

    def __init__(
        self,
        router: str,
        timeout_s: float,
        tls: TlsFiles | None = None,
        token: str | None = None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        """tls: mutual TLS with these files; None or empty: plaintext (refused off loopback without tls.insecure:
        common.tls.PlaintextRefused). token: a bearer token sent with every call. retry: NO_RETRY unless asked, so that
        a router that is down is an exit code at once, not a wait."""
        self.router = router
        self.timeout_s = timeout_s
        self.sagas = SyncSagaClient.connect(router, tls=tls, token=token, timeout_s=timeout_s, retry=retry)

    def close(self) -> None:
        self.sagas.close()

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Calls made in the block that fail raise CallFailed, its message starting with `what`."""
        try:
            yield
        except SagaError as e:
            raise self._failure(what, e) from None

    def list_sagas(self, state: int, page_size: int, limit: int | None) -> tuple[list[saga_pb2.Saga], str]:
        """Sagas newest first, following pages until limit (None: one page), the last page no bigger than what is
        left of it, so that the token returned resumes right after the sagas returned."""
        out: list[saga_pb2.Saga] = []
        token = ""
        while True:
            size = page_size if limit is None else min(page_size, limit - len(out))
            with self.calling("list"):
                (page,) = self.sagas.list_sagas(state=state, page_size=size, page_token=token, max_pages=1)
            out.extend(page.sagas)
            token = page.next_page_token
            if limit is None or not token or len(out) >= limit:
                return out, token

    def list_definitions(self) -> saga_pb2.ListDefinitionsResponse:
        """SagaAdmin.ListDefinitions (the operator role): every definition version the shards hold, merged by the
        router."""
        with self.calling("defs list"):
            return saga_pb2.ListDefinitionsResponse(definitions=self.sagas.list_definitions())

    def _router_answers(self) -> bool:
        """Whether the router itself is reachable (an UNAVAILABLE may be a shard's behind it)."""
        try:
            grpc.channel_ready_future(self.sagas.channel).result(timeout=ROUTER_PROBE_S)
        except grpc.FutureTimeoutError:
            return False
        return True

    def _failure(self, what: str, e: SagaError) -> CallFailed:
        code = e.code.name
        if isinstance(e, Unauthenticated):
            hint = (
                "give a client certificate (--tls-cert/--tls-key/--tls-ca) or a token (--token-file) the router knows"
            )
            return CallFailed(f"{what}: {code}: {e.details}; {hint}", EXIT_REFUSED, code)
        if isinstance(e, Unavailable | DeadlineExceeded) and not self._router_answers():
            message = (
                f"cannot reach the router at {self.router} ({code}: {e.details}).\n"
                "Is it running (`make run`)? Point sagactl elsewhere with --router HOST:PORT or SAGA_ROUTER."
            )
            return CallFailed(message, EXIT_UNREACHABLE, code)
        if isinstance(e, Unavailable):
            message = (
                f"{what}: the router answered UNAVAILABLE (a shard behind it may be down; retry later): {e.details}"
            )
            return CallFailed(message, EXIT_UNREACHABLE, code)
        if isinstance(e, DeadlineExceeded):
            return CallFailed(f"{what}: no answer in time ({e.details}); raise --timeout", EXIT_UNREACHABLE, code)
        return CallFailed(f"{what}: {code}: {e.details}", _EXIT_BY_ERROR.get(type(e), EXIT_REFUSED), code)
