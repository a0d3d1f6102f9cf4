"""Builds and runs one stub process: stores, services, StubControl, health and reflection on one grpc.aio server,
behind the one common.auth interceptor (shop services for role coordinator, StubControl for role operator)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from loguru import logger
from prometheus_client import CollectorRegistry

from common.auth import AuthPolicy, denied_counter, resolve_policy, server_interceptor
from common.grpc_server import ServerLimits, build_server, listen
from common.metrics_http import MetricsServer
from common.tls import TlsFiles
from protos.reflection import enable_reflection
from protos.service_stubs.v1 import control_pb2_grpc
from protos.shop.v1 import (
    inventory_pb2_grpc,
    loyalty_pb2_grpc,
    order_pb2_grpc,
    payment_pb2_grpc,
    shipping_pb2_grpc,
)
from service_stubs.config import ALL_SERVICES, SHOP_SERVICES, StubConfig
from service_stubs.control import StubControlService
from service_stubs.faults import FaultInjector
from service_stubs.group_commit import GroupCommitter
from service_stubs.idempotency import ShopService
from service_stubs.inventory import InventoryService
from service_stubs.loyalty import LoyaltyService
from service_stubs.metrics import StubCollector
from service_stubs.operations import OperationSettings
from service_stubs.order import OrderService
from service_stubs.payment import PaymentService
from service_stubs.shipping import ShippingService
from service_stubs.stats import CallStats
from service_stubs.store import Loaded, Store

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]", "::", ""})


class StubServer:
    """A running stub process (or in-process server, in tests)."""

    def __init__(
        self,
        config: StubConfig,
        server: grpc.aio.Server,
        port: int,
        services: Mapping[str, ShopService[Any]],
        control: StubControlService | None,
        health_servicer: health.aio.HealthServicer,
        committer: GroupCommitter,
        stores: list[Store],
        metrics: MetricsServer | None,
    ) -> None:
        self.config = config
        self.port = port
        self.services = dict(services)
        """Hosted shop services by short name ("payment"), for in-process inspection."""
        self.control = control
        self._server = server
        self._health = health_servicer
        self._committer = committer
        self._stores = stores
        self.metrics = metrics
        """The Prometheus endpoint (`.port`), if config.metrics_listen asked for one."""
        self._stopping: asyncio.Task[None] | None = None

    @property
    def host(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return "127.0.0.1" if host in _WILDCARD_HOSTS else host

    @property
    def address(self) -> str:
        """host:port a client can dial."""
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops accepting calls, lets calls in flight finish for `grace_s`, commits what is pending, closes files.

        Safe to call twice (a signal and a finally block); the second call waits for the first."""
        if self._stopping is None:
            grace = self.config.stop_grace_s if grace_s is None else grace_s
            self._stopping = asyncio.create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
        # No operation finishes from here on: one that is due finishes when the stubs start again.
        for service in self.services.values():
            service.stop_operations()
        # Calls cancelled by the stop may have left rows behind: they were applied, so they must reach the disk.
        await self._committer.close()
        for store in self._stores:
            store.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)  # blocks up to the HTTP server's poll interval
        logger.info("stubs on {} stopped", self.address)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def start(
    *,
    listen: str = "127.0.0.1:0",
    data_dir: str | Path,
    services: Iterable[str] = ALL_SERVICES,
    initial_stock: Mapping[str, int] | None = None,
    slow_token_delay_s: float = 2.0,
    stop_grace_s: float = 1.0,
    metrics_listen: str | None = None,
    tls: TlsFiles | None = None,
    auth: AuthPolicy | None = None,
) -> StubServer:
    """Starts stubs in this event loop (tests); `serve()` takes a full StubConfig."""
    config = StubConfig(
        listen=listen,
        data_dir=Path(data_dir),
        services=tuple(services),
        initial_stock=dict(initial_stock or {}),
        slow_token_delay_s=slow_token_delay_s,
        stop_grace_s=stop_grace_s,
        metrics_listen=metrics_listen,
        tls=tls or TlsFiles(),
        auth=auth,
    )
    return await serve(config)


async def serve(config: StubConfig) -> StubServer:
    """Opens the stores, registers every requested service and starts listening."""
    # Before a store opens: a refused plaintext address or a missing auth policy fails with nothing to undo.
    policy = resolve_policy(config.auth, config.listen, config.tls, "stubs")
    shop_names = [name for name in SHOP_SERVICES if name in config.services]
    opened: list[tuple[Store, Loaded]] = []
    try:
        for name in shop_names:
            opened.append(await asyncio.to_thread(Store.open, config.data_dir / f"{name}.db"))
        return await _start_server(config, policy, shop_names, opened)
    except BaseException:
        for store, _ in opened:
            store.close()
        raise


async def _start_server(
    config: StubConfig, policy: AuthPolicy, shop_names: list[str], opened: list[tuple[Store, Loaded]]
) -> StubServer:
    faults = FaultInjector()
    stats = CallStats()
    services: dict[str, ShopService[Any]] = {}
    for name, (store, loaded) in zip(shop_names, opened, strict=True):
        services[name] = _build_service(name, store, loaded, faults, stats, config)

    # common's limits accept the coordinator's keepalive pings (every 10 s, with or without calls): gRPC's default
    # answered them with GOAWAY "too_many_pings", and a half-open connection then went unnoticed for a minute.
    registry = CollectorRegistry()  # one per server: several may share a test process
    interceptor = server_interceptor(policy, denied_counter(registry))
    server = build_server(ServerLimits(max_concurrent_rpcs=config.max_concurrent_rpcs), interceptors=[interceptor])
    names: list[str] = []
    for service in services.values():
        _ADD_SERVICER[service.name](service, server)
        names.append(service.grpc_service)
    control: StubControlService | None = None
    if "control" in config.services:
        control = StubControlService(list(services.values()), faults, stats, config)
        control_pb2_grpc.add_StubControlServicer_to_server(control, server)
        names.append(control.grpc_service)

    health_servicer = health.aio.HealthServicer()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    enable_reflection(names, server)

    port = listen(server, config.listen, config.tls)
    loop = asyncio.get_running_loop()
    committer = GroupCommitter(loop, config.max_batch_rows)
    for store, _ in opened:
        store.attach(committer)
    # Operations accepted before a restart finish on time (or at once, if already due): their timers need the writer.
    for service in services.values():
        service.start_operations(loop)
    metrics: MetricsServer | None = None
    try:
        if config.metrics_listen is not None:
            registry.register(StubCollector(stats, services))
            metrics = MetricsServer(config.metrics_listen, registry)
        await server.start()
    except BaseException:
        if metrics is not None:
            metrics.close()
        for service in services.values():
            service.stop_operations()
        await committer.close()
        raise
    stores = [store for store, _ in opened]
    stub = StubServer(config, server, port, services, control, health_servicer, committer, stores, metrics)
    loaded_keys = sum(len(service.keys) for service in services.values())
    logger.info("stubs on {} serving {} ({} keys loaded)", stub.address, ",".join(config.services), loaded_keys)
    return stub


def _build_service(
    name: str, store: Store, loaded: Loaded, faults: FaultInjector, stats: CallStats, config: StubConfig
) -> ShopService[Any]:
    operations = OperationSettings(max_in_progress=config.max_operations_in_progress)
    if name == "order":
        return OrderService(store, loaded, faults, stats, operations)
    if name == "inventory":
        return InventoryService(store, loaded, faults, stats, config.default_stock, config.initial_stock, operations)
    if name == "payment":
        return PaymentService(store, loaded, faults, stats, config.slow_token_delay_s, operations)
    if name == "shipping":
        return ShippingService(store, loaded, faults, stats, operations)
    if name == "loyalty":
        return LoyaltyService(store, loaded, faults, stats, operations)
    raise ValueError(f"unknown shop service {name!r}")


_ADD_SERVICER = {
    "order": order_pb2_grpc.add_OrderServiceServicer_to_server,
    "inventory": inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
    "payment": payment_pb2_grpc.add_PaymentServiceServicer_to_server,
    "shipping": shipping_pb2_grpc.add_ShippingServiceServicer_to_server,
    "loyalty": loyalty_pb2_grpc.add_LoyaltyServiceServicer_to_server,
}
