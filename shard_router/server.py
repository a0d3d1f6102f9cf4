"""The router's gRPC server: saga.v1.SagaCoordinator and saga.v1.SagaAdmin as a shard serves them, plus the health
service and server reflection, so a client (or grpcurl) cannot tell the router from a shard.

Every method is registered with bytes in and bytes out: requests routed by saga are relayed without re-encoding (only
their order_id, or saga_type and key, is read; a StartSaga's input stays an Any whose payload the router never
parses), and list calls are decoded only because their pages must be merged.

Who may call is decided once, here, by the server's one common.auth interceptor (policy from --auth-policy); the
principal it authenticated travels on to the shard in metadata (forwarding.IncomingCall), over the router's own mTLS
link."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from loguru import logger

from common.auth import AuthConfigError, Authenticator, AuthPolicy, resolve_policy, server_interceptor
from common.grpc_server import ServerLimits, build_server, listen
from common.metrics_http import MetricsServer
from common.tls import ClientTls, TlsConfigError, check_plaintext
from protos.reflection import enable_reflection
from protos.saga.v1 import saga_pb2
from shard_router.channels import ChannelPool
from shard_router.config import ConfigError, RouterConfig
from shard_router.config import load as load_config
from shard_router.dashboard.app import Dashboard
from shard_router.dashboard.shard_stats import ShardStats
from shard_router.defs.push import DefinitionsPusher
from shard_router.errors import InvalidArgument, RouterError
from shard_router.metrics import Metrics, NullMetrics, RouterMetrics
from shard_router.relay.fanout import FanOut
from shard_router.relay.forwarding import (
    ADMIN_SERVICE,
    GET_SAGA,
    RESOLVE_DEAD_LETTER,
    RETRY_DEAD_LETTER,
    SAGA_SERVICE,
    START_SAGA,
    Forwarder,
    IncomingCall,
    Reply,
)
from shard_router.relay.routing import Router, parse_order_id, parse_start, saga_ref
from shard_router.ring.reload import TopologyManager
from shard_router.ring.shard_health import ShardHealth

UnaryHandler = Callable[[bytes, IncomingCall], Awaitable[Reply | bytes]]
WATCH_METHODS = (f"/{SAGA_SERVICE}/WatchSaga",)
WATCH_STREAMS_PER_PEER = 100
"""WatchSaga streams one client (certificate identity, else IP address) may hold open through the router."""


def server_limits(config: RouterConfig) -> ServerLimits:
    """The router's ServerLimits: common's defaults with the [router] table's message and RPC bounds."""
    settings = config.settings
    return ServerLimits(
        max_send_message_bytes=settings.max_message_bytes,
        max_concurrent_rpcs=settings.max_concurrent_rpcs,
        max_streams_per_peer=WATCH_STREAMS_PER_PEER,
    )


async def _abort(context: Any, e: RouterError) -> None:
    await context.abort(e.code, e.details, e.trailing_metadata)


def _unary(fn: UnaryHandler, name: str) -> Any:
    async def handler(request: bytes, context: Any) -> bytes:
        try:
            reply = await fn(request, IncomingCall.from_context(context))
        except RouterError as e:
            await _abort(context, e)
            raise  # unreachable: abort raises
        except Exception:
            logger.exception("router error in {}", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"router error in {name}")
            raise
        if isinstance(reply, bytes):
            return reply
        if reply.initial_metadata:
            await context.send_initial_metadata(reply.initial_metadata)
        if reply.trailing_metadata:
            context.set_trailing_metadata(reply.trailing_metadata)
        return reply.body

    return grpc.unary_unary_rpc_method_handler(handler)


class RouterServicer:
    """The handlers: each turns one call into routing (by order) or fan-out (every shard)."""

    def __init__(self, router: Router, fanout: FanOut) -> None:
        self._router = router
        self._fanout = fanout

    async def place_order(self, request: bytes, caller: IncomingCall) -> Reply:
        order_id = parse_order_id(saga_pb2.PlaceOrderRequest, request)
        return await self._router.place_order(order_id, request, caller)

    async def start_saga(self, request: bytes, caller: IncomingCall) -> Reply:
        return await self._router.start(parse_start(request), START_SAGA, request, caller)

    async def get_saga(self, request: bytes, caller: IncomingCall) -> Reply:
        saga = saga_ref(_decode(saga_pb2.GetSagaRequest, request))
        return await self._router.to_holder(saga.key, GET_SAGA, request, caller)

    async def list_sagas(self, request: bytes, caller: IncomingCall) -> bytes:
        parsed = _decode(saga_pb2.ListSagasRequest, request)
        return bytes((await self._fanout.list_sagas(parsed, caller)).SerializeToString())

    async def watch_saga(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            saga = saga_ref(_decode(saga_pb2.WatchSagaRequest, request))
            stream, message = await self._router.open_watch(saga.key, request, IncomingCall.from_context(context))
        except RouterError as e:
            await _abort(context, e)
            raise
        try:
            initial = await stream.initial_metadata()
            if initial:
                await context.send_initial_metadata(initial)
            while message is not None:
                yield message
                message = await stream.read()
            trailing = await stream.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(trailing)
        except RouterError as e:
            await _abort(context, e)
        finally:
            stream.cancel()  # no-op once the shard ended the stream; stops it if our caller went away

    async def list_dead_letters(self, request: bytes, caller: IncomingCall) -> bytes:
        parsed = _decode(saga_pb2.ListDeadLettersRequest, request)
        return bytes((await self._fanout.list_dead_letters(parsed, caller)).SerializeToString())

    async def retry_dead_letter(self, request: bytes, caller: IncomingCall) -> Reply | bytes:
        parsed = _decode(saga_pb2.RetryDeadLetterRequest, request)
        if parsed.all:
            return bytes((await self._fanout.retry_all(request, caller, parsed.dry_run)).SerializeToString())
        return await self._router.to_holder(saga_ref(parsed).key, RETRY_DEAD_LETTER, request, caller)

    async def resolve_dead_letter(self, request: bytes, caller: IncomingCall) -> Reply:
        saga = saga_ref(_decode(saga_pb2.ResolveDeadLetterRequest, request))
        return await self._router.to_holder(saga.key, RESOLVE_DEAD_LETTER, request, caller)

    async def list_definitions(self, request: bytes, caller: IncomingCall) -> bytes:
        parsed = _decode(saga_pb2.ListDefinitionsRequest, request)
        return bytes((await self._fanout.list_definitions(parsed, caller)).SerializeToString())

    def handlers(self) -> tuple[Any, ...]:
        return (
            grpc.method_handlers_generic_handler(
                SAGA_SERVICE,
                {
                    "PlaceOrder": _unary(self.place_order, "PlaceOrder"),
                    "StartSaga": _unary(self.start_saga, "StartSaga"),
                    "GetSaga": _unary(self.get_saga, "GetSaga"),
                    "ListSagas": _unary(self.list_sagas, "ListSagas"),
                    "WatchSaga": grpc.unary_stream_rpc_method_handler(self.watch_saga),
                },
            ),
            grpc.method_handlers_generic_handler(
                ADMIN_SERVICE,
                {
                    "ListDeadLetters": _unary(self.list_dead_letters, "ListDeadLetters"),
                    "RetryDeadLetter": _unary(self.retry_dead_letter, "RetryDeadLetter"),
                    "ResolveDeadLetter": _unary(self.resolve_dead_letter, "ResolveDeadLetter"),
                    "ListDefinitions": _unary(self.list_definitions, "ListDefinitions"),
                },
            ),
        )


def _decode(message: Any, request: bytes) -> Any:
    try:
        return message.FromString(request)
    except DecodeError:
        raise InvalidArgument("request", f"not a valid {message.DESCRIPTOR.full_name}") from None


class RouterServer:
    """One router: the gRPC server, its rings and their reloading, shard health checks, and (if configured) the
    Prometheus endpoint and the dashboard. start() binds and serves; stop() drains."""

    def __init__(self, config: RouterConfig, metrics: Metrics | None = None, auth: AuthPolicy | None = None) -> None:
        """auth: who may call (--auth-policy); None: auth off, refused (ConfigError) unless plaintext on loopback."""
        self.config = config
        settings = config.settings
        try:
            self.auth = Authenticator(resolve_policy(auth, config.listen, config.tls, "router"))
        except (AuthConfigError, TlsConfigError) as e:
            raise ConfigError(str(e)) from e
        self.prometheus: RouterMetrics | None = None
        if metrics is None and config.metrics_listen is not None:
            metrics = self.prometheus = RouterMetrics()
        self._metrics = metrics or NullMetrics()
        self.metrics_server: MetricsServer | None = None
        self.pool = ChannelPool(settings.max_message_bytes, settings.channel_close_grace_s, ClientTls(config.tls))
        # Reloads re-read the same file with the same overrides the process started with.
        self.topologies = TopologyManager(
            lambda: load_config(
                config.config_path,
                listen=config.listen,
                epochs_path=config.epochs_path,
                log_json=config.log_json,
                tls=config.tls,
            ),
            self.pool,
            self._metrics,
        )
        forwarder = Forwarder(self.pool, self._metrics)
        current = lambda: self.topologies.current  # noqa: E731 - read at the start of each call
        self.router = Router(current, forwarder, settings.probe_timeout_s, self.topologies)
        fanout = FanOut(current, forwarder, settings)
        self._servicer = RouterServicer(self.router, fanout)
        self._health = health.aio.HealthServicer()
        self.shard_health = ShardHealth(
            current,
            self.pool,
            self._metrics,
            self._health,
            (SAGA_SERVICE, ADMIN_SERVICE),
            settings.health_check_timeout_s,
        )
        self.definitions = DefinitionsPusher(config.definitions_path, current, self.pool, self._metrics)
        self.dashboard: Dashboard | None = None
        if config.dashboard_listen is not None:
            stats = ShardStats(current, settings.dashboard_history_s)
            self.dashboard = Dashboard(
                current,
                self.router,
                self.pool,
                self.shard_health,
                stats,
                auth=self.auth,
                allow_remote=settings.dashboard_allow_remote,
                hosts=settings.dashboard_hosts,
            )
        self._server: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        """Installs the ring, binds and serves; returns the bound port. Raises ConfigError & co. if it cannot."""
        tls = self.config.tls
        try:
            # Before anything is bound or dialled: plaintext off loopback needs --insecure, for clients and shards.
            check_plaintext(self.config.listen, tls, "on")
            for address in self.config.ring.addresses.values():
                check_plaintext(address, tls, "to shard at")
        except TlsConfigError as e:
            await self.pool.close()
            raise ConfigError(str(e)) from e
        await self.topologies.start()
        settings = self.config.settings
        interceptor = server_interceptor(self.auth, self._metrics.auth_denied)
        server = build_server(server_limits(self.config), streams=WATCH_METHODS, interceptors=[interceptor])
        server.add_generic_rpc_handlers(self._servicer.handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection((SAGA_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME), server)
        try:
            self.port = listen(server, self.config.listen, tls)
        except (OSError, TlsConfigError) as e:
            await self.pool.close()
            raise ConfigError(f"cannot listen on {self.config.listen}: {e}") from e
        try:
            if self.prometheus is not None and self.config.metrics_listen is not None:
                self.metrics_server = MetricsServer(self.config.metrics_listen, self.prometheus.registry)
            if self.dashboard is not None and self.config.dashboard_listen is not None:
                await self.dashboard.start(self.config.dashboard_listen)
        except OSError as e:
            if self.metrics_server is not None:
                self.metrics_server.close()
            await self.pool.close()
            raise ConfigError(f"cannot listen for metrics or dashboard: {e}") from e
        await server.start()
        self._server = server
        for name in ("", SAGA_SERVICE, ADMIN_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self.topologies.watch(settings.reload_interval_s)))
        self._tasks.append(asyncio.create_task(self.shard_health.run(settings.health_check_interval_s)))
        self._tasks.append(asyncio.create_task(self.definitions.run(settings.reload_interval_s)))
        if self.dashboard is not None:
            self._tasks.append(asyncio.create_task(self.dashboard.stats.run(settings.dashboard_sample_interval_s)))
        return int(self.port)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server is not None else None

    @property
    def dashboard_port(self) -> int | None:
        return self.dashboard.port if self.dashboard is not None else None

    async def reload(self) -> bool:
        """Re-reads the config now (what the file watch and SIGHUP do)."""
        return await self.topologies.reload()

    def request_reload(self) -> None:
        self.topologies.request_reload()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops taking calls, lets in-flight ones finish within the grace period, then closes every channel."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.dashboard is not None:
            await self.dashboard.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(self.config.settings.shutdown_grace_s if grace_s is None else grace_s)
        await self.pool.close()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
