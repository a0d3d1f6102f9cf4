"""Relaying one call to one shard as raw bytes, so the router never re-encodes a request or a response.

Fan-out calls whose answer the router reads (list pages, bulk retry) go through the same relay (Forwarder.call): one
place times, counts and maps the errors of every call to a shard.

What a forwarded call keeps from the caller: its deadline (the time remaining when the router forwards, so hops share
one budget) and its metadata, minus what gRPC itself owns (pseudo-headers, "grpc-*" reserved keys, user-agent,
content-type, te), minus the ring epoch headers only the router sets, and minus what only an authenticated hop may
assert (common.auth.strip_claimed: the caller's bearer token, x-saga-principal*, x-operator, x-user). In their place the
router adds the principal its interceptor authenticated (common.auth.forwarded_metadata), which a shard believes only
because the router's certificate says router. What it brings back unchanged: the shard's status code, details, and
initial and trailing metadata, including google.rpc.Status details ("grpc-status-details-bin") and "retry-after-ms".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from common import tracing
from common.auth import current_principal, forwarded_metadata, strip_claimed
from common.ring import EPOCH_KEY, REFUSAL_KEY
from shard_router.channels import ChannelPool
from shard_router.errors import Metadata, RouterError, ShardStatus
from shard_router.metrics import Metrics

SAGA_SERVICE = "saga.v1.SagaCoordinator"
ADMIN_SERVICE = "saga.v1.SagaAdmin"
PLACE_ORDER = f"/{SAGA_SERVICE}/PlaceOrder"
START_SAGA = f"/{SAGA_SERVICE}/StartSaga"
GET_SAGA = f"/{SAGA_SERVICE}/GetSaga"
LIST_SAGAS = f"/{SAGA_SERVICE}/ListSagas"
WATCH_SAGA = f"/{SAGA_SERVICE}/WatchSaga"
LIST_DEAD_LETTERS = f"/{ADMIN_SERVICE}/ListDeadLetters"
RETRY_DEAD_LETTER = f"/{ADMIN_SERVICE}/RetryDeadLetter"
RESOLVE_DEAD_LETTER = f"/{ADMIN_SERVICE}/ResolveDeadLetter"
LIST_DEFINITIONS = f"/{ADMIN_SERVICE}/ListDefinitions"

R = TypeVar("R")

# Connection-level headers of the caller's hop: gRPC sets its own on the next hop (and ignores or rejects ours).
_NOT_FORWARDED = frozenset({"user-agent", "content-type", "te", "host", "connection", EPOCH_KEY, REFUSAL_KEY})
"""Also the ring epoch: only the router says which ring it routed a call by (IncomingCall.routed_by)."""


def forwardable(metadata: Any) -> Metadata:
    """The caller's invocation metadata that travels on to the shard."""
    if not metadata:
        return ()
    return tuple(
        (key, value) for key, value in metadata if not key.startswith((":", "grpc-")) and key not in _NOT_FORWARDED
    )


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """The call being handled, as every call made on its behalf inherits it: its metadata and its deadline (not the
    downstream client the coordinator calls a Caller)."""

    metadata: Metadata
    """Forwarded metadata."""
    deadline_monotonic: float | None
    """When the caller stops waiting (time.monotonic()), or None if it set no deadline."""

    @classmethod
    def from_context(cls, context: Any) -> IncomingCall:
        """The caller of the call being handled: its metadata without claimed identity, plus the principal the
        interceptor authenticated (none on a public method)."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        metadata = strip_claimed(forwardable(context.invocation_metadata()))
        principal = current_principal()
        if principal is not None:
            metadata += forwarded_metadata(principal)
        if tracing.enabled():
            # The router's own span (its server interceptor's) is the shards' parent: its context replaces all of the
            # caller's, written by the configured propagators (the channels to the shards carry no client interceptor).
            replaced = tracing.context_keys()
            metadata = [kv for kv in metadata if kv[0] not in replaced]
            metadata += tracing.outgoing()
        return cls(tuple(metadata), deadline)

    def routed_by(self, epoch: int) -> IncomingCall:
        """The same caller, its calls to shards marked with the ring epoch they were routed by (fencing)."""
        return IncomingCall((*self.metadata, (EPOCH_KEY, str(epoch))), self.deadline_monotonic)

    def timeout_s(self, cap_s: float | None = None) -> float | None:
        """Seconds left for the next hop (at most cap_s); DEADLINE_EXCEEDED if none are left."""
        if self.deadline_monotonic is None:
            return cap_s
        remaining = self.deadline_monotonic - time.monotonic()
        if remaining <= 0:
            raise RouterError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the router could forward")
        return remaining if cap_s is None else min(remaining, cap_s)


@dataclass(frozen=True, slots=True)
class Reply:
    """A shard's OK answer to a unary call."""

    body: bytes
    initial_metadata: Metadata
    trailing_metadata: Metadata


@dataclass(frozen=True, slots=True)
class Method(Generic[R]):
    """A unary shard method whose answer the router reads, with the parser of that answer."""

    path: str
    """"/package.Service/Method"."""
    decode: Callable[[bytes], R]
    """Parses the response body, e.g. saga_pb2.ListSagasResponse.FromString."""

    @property
    def name(self) -> str:
        """The method's short name ("ListSagas"), for messages to operators."""
        return self.path.rpartition("/")[2]


def _status(shard_id: str, e: grpc.aio.AioRpcError) -> ShardStatus:
    return ShardStatus(shard_id, e.code(), e.details() or "", tuple(e.trailing_metadata() or ()))


class ShardStream:
    """A server stream opened on one shard; read() relays its messages as bytes."""

    def __init__(self, shard_id: str, call: Any) -> None:
        self.shard_id = shard_id
        self._call = call

    async def read(self) -> bytes | None:
        """The next message, or None once the shard ended the stream with OK. Raises ShardStatus otherwise."""
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise _status(self.shard_id, e) from None
        return None if message is grpc.aio.EOF else bytes(message)

    async def initial_metadata(self) -> Metadata:
        return tuple(await self._call.initial_metadata() or ())

    async def trailing_metadata(self) -> Metadata:
        return tuple(await self._call.trailing_metadata() or ())

    def cancel(self) -> None:
        self._call.cancel()


class Forwarder:
    """Sends raw requests to shards by id and address through the shared channels."""

    def __init__(self, pool: ChannelPool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics

    async def unary(
        self,
        shard_id: str,
        address: str,
        method: str,
        request: bytes,
        caller: IncomingCall,
        *,
        cap_s: float | None = None,
    ) -> Reply:
        """Relays one unary call; raises ShardStatus with the shard's status if it is not OK."""
        call, body = await self._relay(shard_id, address, method, request, caller, cap_s)
        return Reply(body, tuple(await call.initial_metadata() or ()), tuple(await call.trailing_metadata() or ()))

    async def call(self, shard_id: str, address: str, method: Method[R], request: bytes, caller: IncomingCall) -> R:
        """One unary call whose answer the router reads (fan-out): the shard's response, decoded; raises ShardStatus
        with the shard's status if it is not OK."""
        _, body = await self._relay(shard_id, address, method.path, request, caller, None)
        return method.decode(body)

    async def _relay(
        self, shard_id: str, address: str, method: str, request: bytes, caller: IncomingCall, cap_s: float | None
    ) -> tuple[Any, bytes]:
        """The finished call and its response body. The one place a unary call to a shard is timed, counted, and its
        failure turned into ShardStatus."""
        multicallable = self.pool.get(address).unary(method)
        timeout = caller.timeout_s(cap_s)
        started = time.perf_counter()
        call = multicallable(request, metadata=caller.metadata, timeout=timeout)
        try:
            body = await call
        except grpc.aio.AioRpcError as e:
            self.metrics.forwarded(method, shard_id, e.code().name, time.perf_counter() - started)
            raise _status(shard_id, e) from None
        self.metrics.forwarded(method, shard_id, "OK", time.perf_counter() - started)
        return call, bytes(body)

    def stream(self, shard_id: str, address: str, method: str, request: bytes, caller: IncomingCall) -> ShardStream:
        """Opens a server stream; nothing is awaited until the first read()."""
        multicallable = self.pool.get(address).stream(method)
        call = multicallable(request, metadata=caller.metadata, timeout=caller.timeout_s())
        return ShardStream(shard_id, call)
