"""SagaClient: the saga coordinator's API for asyncio services, over grpc.aio.

Conventions are Google API core's and temporalio's Client: one client per process, connected once and shared; every
call has a timeout (the whole call, retries included); calls that are safe to repeat retry UNAVAILABLE and
RESOURCE_EXHAUSTED with exponential backoff and jitter, waiting at least the server's "retry-after-ms"; failures raise
the typed errors of sagaclient.errors. The methods are sagaclient.api's functions, sent over grpc.aio; SyncSagaClient
(sagaclient.sync) sends the same ones over grpc's blocking API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

from . import api
from .api import PageT
from .base import AsyncClientBase, ConnectOptions, Interceptor
from .credentials import TlsFiles, aio_channel
from .errors import from_rpc_error

__all__ = ["SagaClient"]

T = TypeVar("T")


class SagaClient(AsyncClientBase):
    """An asyncio client of the saga coordinator (its router, or a single shard: they serve the same API).

    Build it with `await SagaClient.connect(...)`; use it as `async with` or call close(). Safe to share between tasks.
    """

    @classmethod
    async def connect(cls, address: str, **options: Unpack[ConnectOptions]) -> SagaClient:
        """A client of the router at address ("host:port"); options: see sagaclient.ConnectOptions. The channel
        connects lazily: an unreachable router shows as Unavailable on the first call (after retries)."""
        return cls._connect(address, options, _dial)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> SagaClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _send(self, call: api.Unary[T]) -> T:
        attempts = self._attempts(call)

        @attempts.retrying
        async def attempt() -> Any:
            return await self._rpc(call)(call.request, timeout=attempts.timeout_s(), metadata=self._metadata)

        try:
            return call.result(await attempt())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def _pages(self, paged: api.Paged[PageT]) -> AsyncIterator[PageT]:
        cursor = api.Cursor(paged)
        while (call := cursor.next_call()) is not None:
            yield cursor.advance(await self._send(call))

    async def _follow(self, call: api.Stream[T]) -> AsyncIterator[T]:
        stream = self._rpc(call)(call.request, metadata=self._metadata)
        try:
            async for update in stream:
                yield update
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            stream.cancel()


def _dial(
    address: str, files: TlsFiles, options: Sequence[tuple[str, Any]], interceptors: Sequence[Interceptor]
) -> grpc.aio.Channel:
    # grpc.aio refuses (ValueError) an interceptor of the blocking API, naming the kinds it takes.
    return aio_channel(address, files, options, interceptors=interceptors)
