"""One long-lived grpc.aio channel per shard address, shared by every call to that shard.

Channels are created on first use and kept across ring changes (a reload that keeps a shard keeps its connection).
A channel whose address no config or epoch mentions any more is closed after a grace period, so calls still running on
it finish first. With TLS the channels present the router's certificate; grpcio fixes it when a channel is made, so when
the files change on disk (checked at most once a second, on the next call) every channel is replaced the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from loguru import logger

from common.tls import ClientTls, TlsFiles
from protos.ring.v1 import ring_pb2_grpc
from protos.saga.v1 import saga_pb2_grpc


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # The default reconnect backoff grows to 120 s: a restarted shard would stay UNAVAILABLE through the router long
        # after it is back. Two seconds bounds that.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        # A channel of its own connections: by default channels to one address share them process-wide, so a new
        # channel (ShardHealth's fresh check, ChannelPool.reconnect) would inherit the old one's reconnect backoff.
        ("grpc.use_local_subchannel_pool", 1),
    ]


class ShardClient:
    """The channel to one shard address, with its multicallables cached (creating one per call costs a lookup)."""

    def __init__(self, address: str, max_message_bytes: int, tls: ClientTls | None = None) -> None:
        self.address = address
        tls = tls or ClientTls(TlsFiles())
        # Untraced: a forwarded call carries the router's span context in its metadata (forwarding.IncomingCall).
        self.channel = tls.channel(address, channel_options(max_message_bytes), traced=False)
        self.coordinator = saga_pb2_grpc.SagaCoordinatorStub(self.channel)
        self.admin = saga_pb2_grpc.SagaAdminStub(self.channel)
        self.ring = ring_pb2_grpc.RingServiceStub(self.channel)
        self._unary: dict[str, Any] = {}
        self._stream: dict[str, Any] = {}

    def unary(self, method: str) -> Any:
        """A bytes-in, bytes-out unary multicallable for method ("/package.Service/Method")."""
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self.channel.unary_unary(method, _registered_method=True)
        return call

    def stream(self, method: str) -> Any:
        """A bytes-in, bytes-out server-streaming multicallable for method."""
        call = self._stream.get(method)
        if call is None:
            call = self._stream[method] = self.channel.unary_stream(method, _registered_method=True)
        return call


class ChannelPool:
    def __init__(self, max_message_bytes: int, close_grace_s: float, tls: ClientTls | None = None) -> None:
        self._max_message_bytes = max_message_bytes
        self._close_grace_s = close_grace_s
        self._tls = tls or ClientTls(TlsFiles())
        self._clients: dict[str, ShardClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, address: str) -> ShardClient:
        """The client for address. Raises common.tls.PlaintextRefused for a non-loopback address without TLS."""
        if self._tls.changed():
            logger.info("TLS files changed: new channels to the shards; the old ones close in {}s", self._close_grace_s)
            for old in list(self._clients):
                self._close_later(self._clients.pop(old))
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = ShardClient(address, self._max_message_bytes, self._tls)
        return client

    def reconnect(self, address: str) -> None:
        """Replaces the channel to address (the old one closes after the grace period): the next call dials at once
        instead of waiting out the old channel's reconnect backoff."""
        client = self._clients.pop(address, None)
        if client is not None:
            self._close_later(client)

    def fresh_channel(self, address: str) -> grpc.aio.Channel:
        """A new channel to address, outside the pool (the caller closes it)."""
        return self._tls.channel(address, channel_options(self._max_message_bytes), traced=False)

    def retain(self, addresses: Iterable[str]) -> None:
        """Closes, after the grace period, the channels of every address not in addresses."""
        keep = set(addresses)
        for address in [a for a in self._clients if a not in keep]:
            logger.info("closing channel to {} in {}s: no shard uses it any more", address, self._close_grace_s)
            self._close_later(self._clients.pop(address))

    def _close_later(self, client: ShardClient) -> None:
        task = asyncio.create_task(client.channel.close(self._close_grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Closes every channel now (in-flight calls are cancelled): the router is stopping."""
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.channel.close(None) for c in clients), *self._closing, return_exceptions=True)
