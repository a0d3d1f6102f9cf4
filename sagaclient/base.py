"""What both clients hold and how both connect: the channel, its stubs, the bearer token, the defaults of every call
(timeout_s, retry policy, jitter's randomness), connect()'s options (ConnectOptions), and the API's methods, declared
once: each is a descriptor over a sagaclient.api function that hands the call it builds to the client's own _send,
_pages or _follow, typed for SagaClient as awaitables / async iterators and for SyncSagaClient as plain values /
iterators."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, Generic, ParamSpec, Self, TypeAlias, TypedDict, TypeVar, overload

import grpc

from protos.saga.v1 import saga_pb2_grpc

from . import api
from .api import Paged, PageT, Service, Stream, Unary
from .credentials import TlsFiles, bearer_metadata, read_token_file
from .retry import Attempts, RetryPolicy

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["AsyncClientBase", "ClientBase", "ConnectOptions", "Interceptor", "SyncClientBase"]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRY = RetryPolicy()

# A client library should notice a restarted router within seconds: grpc's default reconnect backoff grows to 120 s.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


Interceptor: TypeAlias = (
    grpc.aio.ClientInterceptor
    | grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
)
"""A client interceptor of either grpc API: grpc.aio's for SagaClient, grpc's own for SyncSagaClient."""

Dial: TypeAlias = Callable[[str, TlsFiles, Sequence[tuple[str, Any]], Sequence[Interceptor]], Any]
"""How a client opens its channel: address, TLS files, channel options, interceptors."""


class ConnectOptions(TypedDict, total=False):
    """connect()'s keyword options, the same for SagaClient and SyncSagaClient.

    tls: mutual TLS with these files (sagaclient.TlsFiles: cert, key, ca); None (default): plaintext, which is refused
    off loopback unless TlsFiles(insecure=True) is given (sagaclient.PlaintextRefused).
    token / token_file: a bearer token sent with every call (the router's auth policy says who it is and what they may
    do); token_file is read once, at connect.
    timeout_s: default timeout of every call, retries included (default 60; place_order waits for the saga's end).
    retry: how repeatable calls retry (default RetryPolicy()); NO_RETRY for none.
    rng: jitter's randomness (seed it for reproducible tests).
    channel_options: extra grpc channel options.
    interceptors: client interceptors every call goes through, the first outermost; they see each attempt of a
    retried call, with the token's metadata. SagaClient: grpc.aio ones, one object per kind (grpc.aio files an object
    under the first kind it subclasses), e.g. OpenTelemetry's `aio_client_interceptors()` so that a trace continues
    through the coordinator. SyncSagaClient: grpc ones (the channel is wrapped with grpc.intercept_channel);
    OpenTelemetry's blocking-API interceptor is not one of those: its GrpcInstrumentorClient().instrument() traces
    every channel the process opens, this client's too, with the global tracer provider (instrument()'s
    tracer_provider argument does not reach the channels)."""

    tls: TlsFiles | None
    token: str | None
    token_file: Path | None
    timeout_s: float
    retry: RetryPolicy
    rng: random.Random | None
    channel_options: Sequence[tuple[str, Any]]
    interceptors: Sequence[Interceptor]


class _Method(Generic[P, T]):
    """A client method built from an api function; what the client does with the call is `_run`'s business."""

    def __init__(self, build: Callable[P, T]) -> None:
        self._build = build
        self.__doc__ = build.__doc__

    def _bind(self, run: Callable[[T], Any]) -> Any:
        build = self._build

        @wraps(build)
        def method(*args: Any, **kwargs: Any) -> Any:
            return run(build(*args, **kwargs))

        return method


class _UnaryMethod(_Method[P, Unary[T]]):
    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: AsyncClientBase, owner: type) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __get__(self, obj: SyncClientBase, owner: type) -> Callable[P, T]: ...
    def __get__(self, obj: ClientBase | None, owner: type) -> Any:
        return self if obj is None else self._bind(obj._send)


class _PagedMethod(_Method[P, Paged[PageT]]):
    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: AsyncClientBase, owner: type) -> Callable[P, AsyncIterator[PageT]]: ...
    @overload
    def __get__(self, obj: SyncClientBase, owner: type) -> Callable[P, Iterator[PageT]]: ...
    def __get__(self, obj: ClientBase | None, owner: type) -> Any:
        return self if obj is None else self._bind(obj._pages)


class _StreamMethod(_Method[P, Stream[T]]):
    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: AsyncClientBase, owner: type) -> Callable[P, AsyncIterator[T]]: ...
    @overload
    def __get__(self, obj: SyncClientBase, owner: type) -> Callable[P, Iterator[T]]: ...
    def __get__(self, obj: ClientBase | None, owner: type) -> Any:
        return self if obj is None else self._bind(obj._follow)


class ClientBase:
    """The state SagaClient and SyncSagaClient share; each adds how it sends a call."""

    def __init__(
        self,
        channel: Any,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        rng: random.Random | None = None,
    ) -> None:
        """Prefer connect(); this takes a channel you made yourself (e.g. with your own interceptors): a grpc.aio
        channel for SagaClient, a grpc one for SyncSagaClient."""
        self._channel = channel
        self._metadata = bearer_metadata(token)
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        self._stubs: dict[Service, Any] = {
            "saga": saga_pb2_grpc.SagaCoordinatorStub(channel),
            "admin": saga_pb2_grpc.SagaAdminStub(channel),
        }

    @property
    def channel(self) -> Any:
        """The grpc channel calls go over (for its connectivity, or stubs of your own)."""
        return self._channel

    @classmethod
    def _connect(cls, address: str, options: ConnectOptions, dial: Dial) -> Self:
        token, token_file = options.get("token"), options.get("token_file")
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token_file(token_file)
        channel = dial(
            address,
            options.get("tls") or TlsFiles(),
            (*CHANNEL_OPTIONS, *options.get("channel_options", ())),
            options.get("interceptors", ()),
        )
        return cls(
            channel,
            token=token,
            timeout_s=options.get("timeout_s", DEFAULT_TIMEOUT_S),
            retry=options.get("retry", DEFAULT_RETRY),
            rng=options.get("rng"),
        )

    place_order = _UnaryMethod(api.place_order)
    start_saga = _UnaryMethod(api.start_saga)
    get_saga = _UnaryMethod(api.get_saga)
    list_sagas = _PagedMethod(api.list_sagas)
    watch_saga = _StreamMethod(api.watch_saga)
    list_dead_letters = _PagedMethod(api.list_dead_letters)
    retry_dead_letter = _UnaryMethod(api.retry_dead_letter)
    retry_all_dead_letters = _UnaryMethod(api.retry_all_dead_letters)
    resolve_dead_letter = _UnaryMethod(api.resolve_dead_letter)
    list_definitions = _UnaryMethod(api.list_definitions)

    # How a client sends what the methods build: SagaClient over grpc.aio, SyncSagaClient over grpc's blocking API.
    def _send(self, call: Unary[Any]) -> Any:
        raise NotImplementedError

    def _pages(self, paged: Paged[Any]) -> Any:
        raise NotImplementedError

    def _follow(self, call: Stream[Any]) -> Any:
        raise NotImplementedError

    def _rpc(self, call: Unary[Any] | Stream[Any]) -> Any:
        return getattr(self._stubs[call.service], call.method)

    def _attempts(self, call: Unary[Any]) -> Attempts:
        budget_s = self.timeout_s if call.timeout_s is None else call.timeout_s
        return Attempts(call.retry or self.retry, budget_s, self._rng)


class AsyncClientBase(ClientBase):
    """What SagaClient is to the method descriptors: its calls are awaited (grpc.aio)."""


class SyncClientBase(ClientBase):
    """What SyncSagaClient is to the method descriptors: its calls return values (grpc's own API)."""
