"""SagaClient: the saga coordinator's API for Python services, over grpc.aio.

Conventions are Google API core's and temporalio's Client: one client per process, connected once and shared; every
call has a timeout (the whole call, retries included); calls that are safe to repeat retry UNAVAILABLE and
RESOURCE_EXHAUSTED with exponential backoff and jitter, waiting at least the server's "retry-after-ms"; failures raise
the typed errors of sagaclient.errors. Results are the API's own protobuf messages (protos.saga.v1.saga_pb2), documented
field by field in protos/saga/v1/saga.proto.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import backoff
import grpc

from common.tls import TlsFiles, aio_channel
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

from .errors import RETRYABLE_CODES, from_rpc_error, retry_after_s

__all__ = ["DeadLetterPage", "RetryPolicy", "SagaClient", "SagaPage", "read_token_file"]

T = TypeVar("T")

# A client library should notice a restarted router within seconds: grpc's default reconnect backoff grows to 120 s.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


@dataclass(frozen=True)
class RetryPolicy:
    """How calls that are safe to repeat retry UNAVAILABLE and RESOURCE_EXHAUSTED."""

    initial_backoff_s: float = 0.1
    """Wait before the first retry."""
    multiplier: float = 2.0
    """Each wait is this many times the previous one."""
    max_backoff_s: float = 5.0
    """No wait is longer than this, except what the server's retry-after-ms asks for."""
    max_attempts: int = 20
    """Attempts in all, the first included; the call's timeout bounds them too."""
    jitter: float = 0.2
    """Each wait is shortened by a random fraction up to this (never below the server's retry-after-ms)."""

    def __post_init__(self) -> None:
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("RetryPolicy: need 0 < initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy: multiplier must be >= 1")
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy: max_attempts must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy: jitter must be in [0, 1)")


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class SagaPage:
    """One page of list_sagas."""

    sagas: list[saga_pb2.Saga] = field(default_factory=list)
    """Newest first, without their event logs."""
    next_page_token: str = ""
    """Pass to list_sagas(page_token=...) to resume after this page; empty on the last page."""


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of list_dead_letters."""

    dead_letters: list[saga_pb2.DeadLetter] = field(default_factory=list)
    """Oldest first."""
    next_page_token: str = ""
    """Empty on the last page."""


def read_token_file(path: Path) -> str:
    """The bearer token in a file: its first line, whitespace stripped. ValueError naming the file, never the token."""
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read token file {path}: {getattr(e, 'strerror', None) or 'not text'}") from None
    token = lines[0].strip() if lines else ""
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"token file {path} holds no token (one line: the token itself)")
    return token


def _waits(policy: RetryPolicy, rng: random.Random) -> Generator[float, BaseException | None, None]:
    """backoff's wait generator: it is sent the exception of each failed attempt, so a retry-after-ms hint stretches
    the next wait (exponential backoff alone might retry an overloaded shard too early)."""
    delay_s = policy.initial_backoff_s
    error = yield 0.0  # backoff primes the generator with send(None)
    while True:
        wait_s = delay_s * (1 - policy.jitter * rng.random())
        if isinstance(error, grpc.aio.AioRpcError):
            wait_s = max(wait_s, retry_after_s(error) or 0.0)
        delay_s = min(policy.max_backoff_s, delay_s * policy.multiplier)
        error = yield wait_s


class SagaClient:
    """An asyncio client of the saga coordinator (its router, or a single shard: they serve the same API).

    Build it with `await SagaClient.connect(...)`; use it as `async with` or call close(). Safe to share between tasks.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
    ) -> None:
        """Prefer connect(); this takes a channel you made yourself (e.g. with your own interceptors)."""
        self._channel = channel
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        self._saga = saga_pb2_grpc.SagaCoordinatorStub(channel)
        self._admin = saga_pb2_grpc.SagaAdminStub(channel)

    @classmethod
    async def connect(
        cls,
        address: str,
        *,
        tls: TlsFiles | None = None,
        token: str | None = None,
        token_file: Path | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> SagaClient:
        """A client of the router at address ("host:port").

        tls: mutual TLS with these files (common.tls.TlsFiles: cert, key, ca); None: plaintext, which is refused off
        loopback unless TlsFiles(insecure=True) is given (common.tls.PlaintextRefused).
        token / token_file: a bearer token sent with every call (the router's auth policy says who it is and what
        they may do); token_file is read once, here.
        timeout_s: default timeout of every call, retries included (place_order waits for the saga's end by default).
        retry: how repeatable calls retry; NO_RETRY for none. rng: jitter's randomness (seed it for reproducible tests).

        The channel connects lazily: an unreachable router shows as Unavailable on the first call (after retries)."""
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token_file(token_file)
        channel = aio_channel(address, tls or TlsFiles(), (*_CHANNEL_OPTIONS, *channel_options))
        return cls(channel, token=token, timeout_s=timeout_s, retry=retry, rng=rng)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> SagaClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ calls

    async def _call(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        timeout_s: float | None,
        retry: RetryPolicy | None,
    ) -> T:
        """One unary call within timeout_s (retries included), retried by `retry` (None: no retries)."""
        budget_s = self.timeout_s if timeout_s is None else timeout_s
        policy = retry or NO_RETRY
        deadline = time.monotonic() + budget_s

        last: list[grpc.aio.AioRpcError] = []

        def give_up(e: grpc.aio.AioRpcError) -> bool:
            last[:] = [e]
            return e.code() not in RETRYABLE_CODES

        @backoff.on_exception(
            lambda: _waits(policy, self._rng),
            grpc.aio.AioRpcError,
            max_tries=policy.max_attempts,
            max_time=budget_s,
            giveup=give_up,
            jitter=None,  # _waits jitters itself, so that it never undercuts retry-after-ms
            logger=None,  # a library does not log every retry of its caller's calls; the final error says enough
        )
        async def attempt() -> T:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 and last:
                raise last[0]  # backoff slept to the deadline: the outage, not an empty attempt, is the answer
            return await method(request, timeout=max(remaining_s, 0.001), metadata=self._metadata)

        try:
            return await attempt()
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None

    async def place_order(
        self,
        order_id: str,
        user_id: str,
        items: Iterable[tuple[str, int]] | Iterable[saga_pb2.Item],
        payment_info: saga_pb2.PaymentInfo,
        *,
        ttl_ms: int | None = None,
        no_wait: bool = False,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> saga_pb2.PlaceOrderResponse:
        """Runs the order's saga and returns its outcome (status SUCCESS or FAILED, with the saga's state and error
        message); with no_wait, returns PENDING as soon as the saga is durably accepted.

        Retries are safe: PlaceOrder is idempotent by order_id. The same order_id and payload joins the saga already
        running (or returns its outcome) instead of starting a second one, so a retry after a lost answer never
        charges twice. UNAVAILABLE and RESOURCE_EXHAUSTED are retried with the same request until the client's retry
        policy (or `retry`) or timeout_s (default: the client's) runs out, waiting at least the server's
        retry-after-ms. A different payload under a used order_id raises AlreadyExists; bad input InvalidRequest with
        the field named. items: (item_id, quantity) pairs or saga_pb2.Item messages."""
        lines = [i if isinstance(i, saga_pb2.Item) else saga_pb2.Item(item_id=i[0], quantity=i[1]) for i in items]
        request = saga_pb2.PlaceOrderRequest(
            order_id=order_id, user_id=user_id, items=lines, payment_info=payment_info, no_wait=no_wait
        )
        if ttl_ms is not None:
            request.ttl_ms = ttl_ms
        return await self._call(self._saga.PlaceOrder, request, timeout_s, retry or self.retry)

    async def get_saga(
        self,
        order_id: str,
        *,
        include_events: bool = False,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> saga_pb2.Saga:
        """The order's saga (steps; the event log too with include_events). NotFound if there is none. Retried by
        `retry` (default: the client's policy)."""
        request = saga_pb2.GetSagaRequest(order_id=order_id, include_events=include_events)
        return await self._call(self._saga.GetSaga, request, timeout_s, retry or self.retry)

    async def list_sagas(
        self,
        *,
        state: saga_pb2.SagaState.ValueType = saga_pb2.SAGA_STATE_UNSPECIFIED,
        page_size: int = 50,
        page_token: str = "",
        max_pages: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[SagaPage]:
        """Pages of sagas, newest first, optionally only those in `state`, until the last page or max_pages. Each
        page is one call (page_size 1-500), retried, with its own timeout_s."""
        pages = 0
        while max_pages is None or pages < max_pages:
            request = saga_pb2.ListSagasRequest(state=state, page_size=page_size, page_token=page_token)
            reply = await self._call(self._saga.ListSagas, request, timeout_s, self.retry)
            pages += 1
            yield SagaPage(list(reply.sagas), reply.next_page_token)
            page_token = reply.next_page_token
            if not page_token:
                return

    async def watch_saga(self, order_id: str) -> AsyncIterator[saga_pb2.SagaUpdate]:
        """The saga's current snapshot (event unset), then one update per journal event, ending after its terminal
        state. No timeout and no retry: a watch lasts as long as the saga; if it breaks (Unavailable), watch again
        (the first update is the current snapshot, so nothing is lost but intermediate events)."""
        stream = self._saga.WatchSaga(saga_pb2.WatchSagaRequest(order_id=order_id), metadata=self._metadata)
        try:
            async for update in stream:
                yield update
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from None
        finally:
            stream.cancel()

    # ------------------------------------------------------------------ admin (the operator role)

    async def list_dead_letters(
        self,
        *,
        step: saga_pb2.Step.ValueType = saga_pb2.STEP_UNSPECIFIED,
        include_closed: bool = False,
        page_size: int = 50,
        page_token: str = "",
        max_pages: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[DeadLetterPage]:
        """Pages of dead letters, oldest first (open ones; closed ones too with include_closed). Retried."""
        pages = 0
        while max_pages is None or pages < max_pages:
            request = saga_pb2.ListDeadLettersRequest(
                step=step, include_closed=include_closed, page_size=page_size, page_token=page_token
            )
            reply = await self._call(self._admin.ListDeadLetters, request, timeout_s, self.retry)
            pages += 1
            yield DeadLetterPage(list(reply.dead_letters), reply.next_page_token)
            page_token = reply.next_page_token
            if not page_token:
                return

    async def retry_dead_letter(self, order_id: str, reason: str, *, timeout_s: float | None = None) -> list[str]:
        """Resumes the dead-lettered saga's compensation; returns the order ids resumed. Not retried (an answer lost
        after the retry was journaled would make a second attempt fail with FailedPrecondition)."""
        request = saga_pb2.RetryDeadLetterRequest(order_id=order_id, reason=reason)
        reply = await self._call(self._admin.RetryDeadLetter, request, timeout_s, None)
        return list(reply.order_ids)

    async def retry_all_dead_letters(
        self, reason: str, *, step: saga_pb2.Step.ValueType = saga_pb2.STEP_UNSPECIFIED, timeout_s: float | None = None
    ) -> list[str]:
        """Resumes every open dead letter (of `step`, if given), up to the shard's bulk limit per call. Not retried."""
        request = saga_pb2.RetryDeadLetterRequest(all=True, step=step, reason=reason)
        reply = await self._call(self._admin.RetryDeadLetter, request, timeout_s, None)
        return list(reply.order_ids)

    async def resolve_dead_letter(self, order_id: str, reason: str, *, timeout_s: float | None = None) -> saga_pb2.Saga:
        """Marks a dead-lettered saga as fixed by hand (RESOLVED), reason written to its log; returns the saga. Not
        retried."""
        request = saga_pb2.ResolveDeadLetterRequest(order_id=order_id, reason=reason)
        reply = await self._call(self._admin.ResolveDeadLetter, request, timeout_s, None)
        return reply.saga
