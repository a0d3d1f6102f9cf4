"""How every process builds its gRPC server: the same limits against abuse (ServerLimits), the same per-peer bound on
long-lived streams (an interceptor), and one way to listen (TLS, or plaintext on loopback only).

    server = build_server(ServerLimits(max_send_message_bytes=..., max_streams_per_peer=100), streams=WATCH_METHODS)
    ...add servicers...
    port = listen(server, "127.0.0.1:50051", tls_files)

The defaults and where each process changes them are tabled in deploy/README.md ("Limits against abuse").
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from loguru import logger

from . import tracing
from .tls import TlsFiles, check_plaintext, peer_key, server_credentials

__all__ = ["PeerStreamLimit", "ServerLimits", "build_server", "listen", "server_options"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class ServerLimits:
    """Per-server bounds against a misbehaving or hostile client. Frozen; one per server, validated at construction."""

    max_receive_message_bytes: int = 1 * MIB
    """Largest request accepted; bigger ones get RESOURCE_EXHAUSTED before any handler runs (an order is ~1 KB)."""
    max_send_message_bytes: int = 16 * MIB
    """Largest reply sent (a 500-saga page with its steps fits well within it)."""
    max_metadata_bytes: int = 16 * KIB
    """Largest header (or trailer) block received; a client cannot make the server buffer more per call."""
    max_concurrent_streams: int = 10_000
    """Calls one connection may have open at once (HTTP/2 SETTINGS). Past it grpcio refuses new streams
    (RST_STREAM REFUSED_STREAM, which the caller sees as UNAVAILABLE) rather than queueing them, and the router's one
    connection to a shard carries all its calls: at 1,024, a 3 s downstream outage at 200 orders/s (over 1,000
    PlaceOrders waiting on one shard) failed orders that would have succeeded. So it matches the process-wide bound,
    max_concurrent_rpcs, which answers RESOURCE_EXHAUSTED; per-peer abuse is bounded by max_streams_per_peer."""
    max_concurrent_rpcs: int = 10_000
    """Calls in flight in the whole process; past it gRPC answers RESOURCE_EXHAUSTED instead of queueing."""
    max_streams_per_peer: int = 100
    """Long-lived streams (WatchSaga) open at once per peer: per certificate identity, else per IP address."""
    handshake_timeout_ms: int = 10_000
    """A connection that has not finished its TLS and HTTP/2 handshakes by then is closed (gRPC's default: 120 s)."""
    min_ping_interval_without_data_ms: int = 5_000
    """Client keepalive pings closer together than this are strikes; past max_ping_strikes the connection gets
    GOAWAY (too_many_pings). Our clients ping every 10 s, with or without calls."""
    max_ping_strikes: int = 2
    """Pings too close together tolerated before the connection is closed."""
    keepalive_time_ms: int = 60_000
    """The server pings a silent connection this often, so a vanished client's streams are freed in about a minute
    (gRPC's default: two hours)."""
    keepalive_timeout_ms: int = 20_000
    """An unanswered server ping closes the connection after this long."""
    max_connection_idle_ms: int = 300_000
    """A connection without calls for this long is closed with GOAWAY (clients reconnect on their next call)."""
    max_connection_age_ms: int | None = None
    """Close connections this old (with a GOAWAY) so clients re-handshake; None: never. Off by default: a WatchSaga
    stream lasts as long as its saga, and max_connection_age_grace_ms would cut it."""
    max_connection_age_grace_ms: int = 60_000
    """With max_connection_age_ms: how long calls in flight may finish after the GOAWAY."""

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value is not None and value < 1:
                raise ValueError(f"ServerLimits.{name} must be >= 1, got {value}")


def server_options(limits: ServerLimits) -> list[tuple[str, int]]:
    """The grpc.aio.server channel arguments for limits."""
    options = [
        # Without this, two processes can bind the same port and split the traffic silently.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.max_send_message_bytes),
        ("grpc.max_metadata_size", limits.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        # Accept our clients' keepalive pings (every 10 s, with or without calls): gRPC's server default (pings
        # without calls are strikes, at most one per 5 min) answers them with GOAWAY "too_many_pings", which dropped
        # every idle channel after ~30 s.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", limits.min_ping_interval_without_data_ms),
        ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
        ("grpc.keepalive_time_ms", limits.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", limits.keepalive_timeout_ms),
        ("grpc.max_connection_idle_ms", limits.max_connection_idle_ms),
    ]
    if limits.max_connection_age_ms is not None:
        options += [
            ("grpc.max_connection_age_ms", limits.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", limits.max_connection_age_grace_ms),
        ]
    return options


# Long-lived streams every server has, open to any peer that completes the handshake (health and reflection need no
# role): bounded per peer like WatchSaga, or one certificate holder could hold max_concurrent_rpcs streams open and
# starve every other caller.
OPEN_STREAMS = (
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)


async def stream_items(result: Any) -> AsyncIterator[Any]:
    """What a streaming handler produced: it is an async generator, or a coroutine that writes through
    context.write() (grpc_health's Watch) and yields nothing here."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result


class PeerStreamLimit(grpc.aio.ServerInterceptor):
    """Bounds the streaming calls of `methods` ("/pkg.Service/Method"; server-streaming or bidirectional) one peer
    (common.tls.peer_key) may have open at once; one more gets RESOURCE_EXHAUSTED. Other methods pass through."""

    def __init__(self, methods: Collection[str], max_per_peer: int) -> None:
        self._methods = frozenset(methods)
        self.max_per_peer = max_per_peer
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()  # handlers run on the event loop, but a server may be shared in tests

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self._methods:
            return handler
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._bounded(handler.unary_stream))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._bounded(handler.stream_stream))
        return handler

    def _bounded(self, inner: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            key = peer_key(context)
            with self._lock:
                count = self._open.get(key, 0)
                admitted = count < self.max_per_peer
                if admitted:
                    self._open[key] = count + 1
            if not admitted:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many open streams from this peer (at most {self.max_per_peer}); close one and retry",
                )
            try:
                async for item in stream_items(inner(request, context)):
                    yield item
            finally:
                with self._lock:
                    left = self._open[key] - 1
                    if left:
                        self._open[key] = left
                    else:
                        del self._open[key]

        return bounded


def build_server(
    limits: ServerLimits,
    *,
    streams: Collection[str] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    joined: Collection[str] = (),
) -> grpc.aio.Server:
    """A grpc.aio server with limits applied; `streams` are the server's own long-lived streaming methods, bounded per
    peer together with OPEN_STREAMS (health watch, reflection). `interceptors` (authentication) run before the bound,
    after tracing's (common.tracing; none when it is off), so refused calls show in traces too. `joined`: methods
    whose calls join their caller's span instead of making a server span (common.trace_server)."""
    chain = [*tracing.server_interceptors(joined), *interceptors]
    chain.append(PeerStreamLimit((*streams, *OPEN_STREAMS), limits.max_streams_per_peer))
    return grpc.aio.server(
        options=server_options(limits),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        interceptors=chain or None,
    )


def listen(server: grpc.aio.Server, address: str, tls: TlsFiles) -> int:
    """Adds address to server: mutual TLS with tls's files (reloaded when they change), else plaintext, which is
    refused off loopback without --insecure (before anything is bound). Returns the bound port; OSError if it cannot
    bind, common.tls.TlsConfigError for bad files or a refused plaintext address."""
    if tls.enabled:
        try:
            port = server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as e:
            raise OSError(f"cannot listen on {address}: {e}") from e
    else:
        check_plaintext(address, tls, "on")
        if tls.insecure:
            logger.warning(
                "serving plaintext gRPC on {} (--insecure): anyone on the path can read and call it", address
            )
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:  # grpcio raises this, not OSError, when the port is taken
            raise OSError(f"cannot listen on {address}: {e}") from e
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return int(port)
