"""SyncSagaClient: the same API as SagaClient, for scripts and services without an event loop, over grpc's blocking
API (no event loop per call). Same methods (sagaclient.api's functions), timeouts, retries and typed errors; lists and
watches are plain iterators."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

from . import api
from .api import PageT
from .base import ConnectOptions, Interceptor, SyncClientBase
from .credentials import TlsFiles, sync_channel
from .errors import from_rpc_error

__all__ = ["SyncSagaClient"]

T = TypeVar("T")


class SyncSagaClient(SyncClientBase):
    """A blocking client of the saga coordinator (its router, or a single shard: they serve the same API).

    Build it with `SyncSagaClient.connect(...)`; use it as `with` or call close(). Safe to share between threads.
    """

    @classmethod
    def connect(cls, address: str, **options: Unpack[ConnectOptions]) -> SyncSagaClient:
        """A client of the router at address ("host:port"); options: see sagaclient.ConnectOptions. The channel
        connects lazily: an unreachable router shows as Unavailable on the first call (after retries)."""
        return cls._connect(address, options, _dial)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SyncSagaClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _send(self, call: api.Unary[T]) -> T:
        attempts = self._attempts(call)

        @attempts.retrying
        def attempt() -> Any:
            return self._rpc(call)(call.request, timeout=attempts.timeout_s(), metadata=self._metadata)

        try:
            return call.result(attempt())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _pages(self, paged: api.Paged[PageT]) -> Iterator[PageT]:
        cursor = api.Cursor(paged)
        while (call := cursor.next_call()) is not None:
            yield cursor.advance(self._send(call))

    def _follow(self, call: api.Stream[T]) -> Iterator[T]:
        stream = self._rpc(call)(call.request, metadata=self._metadata)
        try:
            yield from stream
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            stream.cancel()


def _dial(
    address: str, files: TlsFiles, options: Sequence[tuple[str, Any]], interceptors: Sequence[Interceptor]
) -> grpc.Channel:
    channel = sync_channel(address, files, options)
    # grpc.intercept_channel refuses (TypeError) a grpc.aio interceptor, naming the kinds it takes. The wrapper's
    # close() closes the channel under it.
    return grpc.intercept_channel(channel, *interceptors) if interceptors else channel
