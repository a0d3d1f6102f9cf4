"""The stub services for tests: in-process (`running_stubs`), as a real process run by the launcher (`StubProcess`), and
typed clients.

    async with running_stubs(tmp_path) as stubs:               # data in tmp_path, a free port
        async with ShopClient(stubs.address) as shop:
            await shop.charge("o-1", key="k-1", token="tok_ok", amount_cents=500)
        ledgers = await get_ledgers(stubs.address, ["o-1"])

    with StubProcess(tmp_path / "stubs") as proc:              # python -m service_stubs on a free port
        proc.kill()                                            # SIGKILL
        proc.restart()                                         # same port, same data dir

StubProcess methods block (up to a few seconds while the process starts); from async code that must keep serving
in-process servers meanwhile, call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

import service_stubs
from deploy.local import ClusterSpec, ProcessSpec, Supervisor, free_port
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from protos.service_stubs.v1.control_pb2 import OrderLedger
from protos.shop.v1 import (
    common_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    loyalty_pb2,
    loyalty_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
    shipping_pb2,
    shipping_pb2_grpc,
)
from service_stubs import IDEMPOTENCY_KEY, StubServer
from service_stubs.keys import KeyTable

REPO_ROOT = Path(__file__).resolve().parents[2]

LEDGER_CHUNK = 1_000


# ---------------------------------------------------------------- in-process


@asynccontextmanager
async def running_stubs(
    data_dir: Path,
    *,
    services: Iterable[str] = service_stubs.ALL_SERVICES,
    listen: str = "127.0.0.1:0",
    initial_stock: Mapping[str, int] | None = None,
    slow_token_delay_s: float = 2.0,
    metrics_listen: str | None = None,
) -> AsyncIterator[StubServer]:
    """Stubs in this event loop, storing their SQLite files in `data_dir`; stopped on exit."""
    server = await service_stubs.start(
        listen=listen,
        data_dir=data_dir,
        services=services,
        initial_stock=initial_stock,
        slow_token_delay_s=slow_token_delay_s,
        stop_grace_s=0.5,
        metrics_listen=metrics_listen,
    )
    try:
        yield server
    finally:
        await server.stop()


# ---------------------------------------------------------------- subprocess


class StubProcess:
    """`python -m service_stubs` on a fixed port, so a restart comes back at the same address: one process run by the
    launcher's Supervisor (deploy.local), its output appended to `log_path` (which must end in .log)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        services: Sequence[str] | None = None,
        stock: Mapping[str, int] | None = None,
        log_path: Path | None = None,
        start: bool = True,
        ready_timeout_s: float = 15.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port if port is not None else free_port()
        self.services = tuple(services) if services is not None else service_stubs.ALL_SERVICES
        self.stock = dict(stock or {})
        self.log_path = log_path if log_path is not None else self.data_dir.parent / f"stubs-{self.port}.log"
        if self.log_path.suffix != ".log":
            raise ValueError(f"log_path must end in .log (the launcher names it <name>.log), got {self.log_path}")
        args = ["--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        args += ["--services", ",".join(self.services)]
        for item_id, quantity in self.stock.items():
            args += ["--stock", f"{item_id}={quantity}"]
        spec = ProcessSpec(self.log_path.stem, "service_stubs", f"127.0.0.1:{self.port}", tuple(args), {})
        cluster = ClusterSpec((spec,), self.data_dir, ready_timeout_s=ready_timeout_s, stop_timeout_s=10.0)
        self.supervisor = Supervisor(cluster, log_dir=self.log_path.parent, cwd=REPO_ROOT)
        self.child = self.supervisor[spec.name]
        if start:
            self.start()

    @property
    def address(self) -> str:
        return self.child.address

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def running(self) -> bool:
        return self.child.running

    def start(self) -> None:
        """Starts the process and blocks until it is healthy; LaunchError (with its log's tail) if it is not."""
        self.supervisor.start()

    def kill(self) -> None:
        """SIGKILL: no graceful anything, as in a crash."""
        self.supervisor.kill(self.child.name)

    def terminate(self) -> int:
        """SIGTERM and wait (SIGKILL after 10 s): the graceful stop. Returns the exit code."""
        self.supervisor.stop()
        code = self.child.exit_code()
        assert code is not None, "never started"
        return code

    def restart(self) -> None:
        """Stops the process if it still runs (gracefully), then starts it again on the same port and data dir."""
        if self.running:
            self.terminate()
        self.start()

    def log(self) -> str:
        return self.child.log()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# ---------------------------------------------------------------- clients


def key_metadata(key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an idempotency key."""
    return ((IDEMPOTENCY_KEY, key),)


def items(*pairs: tuple[str, int]) -> list[common_pb2.Item]:
    """items(("sku-1", 2), ("sku-2", 1)) -> order lines."""
    return [common_pb2.Item(item_id=item_id, quantity=quantity) for item_id, quantity in pairs]


class _Channel:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class ShopClient(_Channel):
    """The shop services on one address, with the idempotency key as an argument."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.order = order_pb2_grpc.OrderServiceStub(self.channel)
        self.inventory = inventory_pb2_grpc.InventoryServiceStub(self.channel)
        self.payment = payment_pb2_grpc.PaymentServiceStub(self.channel)
        self.shipping = shipping_pb2_grpc.ShippingServiceStub(self.channel)
        self.loyalty = loyalty_pb2_grpc.LoyaltyServiceStub(self.channel)

    async def create_order(
        self,
        order_id: str,
        *,
        key: str,
        user_id: str = "u-1",
        lines: Sequence[tuple[str, int]] = (("sku-1", 1),),
        timeout_s: float = 10.0,
    ) -> order_pb2.CreateOrderResponse:
        request = order_pb2.CreateOrderRequest(order_id=order_id, user_id=user_id, items=items(*lines))
        return await self.order.CreateOrder(request, metadata=key_metadata(key), timeout=timeout_s)

    async def reserve(
        self, order_id: str, *, key: str, lines: Sequence[tuple[str, int]] = (("sku-1", 1),), timeout_s: float = 10.0
    ) -> inventory_pb2.ReserveInventoryResponse:
        request = inventory_pb2.ReserveInventoryRequest(order_id=order_id, items=items(*lines))
        return await self.inventory.ReserveInventory(request, metadata=key_metadata(key), timeout=timeout_s)

    async def charge(
        self,
        order_id: str,
        *,
        key: str,
        token: str = "tok_ok",
        amount_cents: int = 1_000,
        currency: str = "EUR",
        user_id: str = "u-1",
        timeout_s: float = 10.0,
    ) -> payment_pb2.ChargePaymentResponse:
        request = payment_pb2.ChargePaymentRequest(
            order_id=order_id, user_id=user_id, payment_token=token, amount_cents=amount_cents, currency=currency
        )
        return await self.payment.ChargePayment(request, metadata=key_metadata(key), timeout=timeout_s)

    async def schedule(
        self,
        order_id: str,
        *,
        key: str,
        user_id: str = "u-1",
        lines: Sequence[tuple[str, int]] = (("sku-1", 1),),
        timeout_s: float = 10.0,
    ) -> shipping_pb2.ScheduleShipmentResponse:
        request = shipping_pb2.ScheduleShipmentRequest(order_id=order_id, user_id=user_id, items=items(*lines))
        return await self.shipping.ScheduleShipment(request, metadata=key_metadata(key), timeout=timeout_s)

    async def award(
        self, order_id: str, *, key: str, user_id: str = "u-1", points: int = 100, timeout_s: float = 10.0
    ) -> loyalty_pb2.AwardPointsResponse:
        request = loyalty_pb2.AwardPointsRequest(order_id=order_id, user_id=user_id, points=points)
        return await self.loyalty.AwardPoints(request, metadata=key_metadata(key), timeout=timeout_s)

    async def compensate(
        self,
        service: str,
        order_id: str,
        *,
        key: str,
        forward_key: str,
        reason: str = "test",
        timeout_s: float = 10.0,
    ) -> common_pb2.CompensationResponse:
        """service: "order", "inventory", "payment", "shipping" or "loyalty"."""
        request = common_pb2.CompensationRequest(order_id=order_id, forward_idempotency_key=forward_key, reason=reason)
        metadata = key_metadata(key)
        if service == "order":
            return await self.order.CancelOrder(request, metadata=metadata, timeout=timeout_s)
        if service == "inventory":
            return await self.inventory.ReleaseInventory(request, metadata=metadata, timeout=timeout_s)
        if service == "payment":
            return await self.payment.RefundPayment(request, metadata=metadata, timeout=timeout_s)
        if service == "shipping":
            return await self.shipping.CancelShipment(request, metadata=metadata, timeout=timeout_s)
        if service == "loyalty":
            return await self.loyalty.RevokePoints(request, metadata=metadata, timeout=timeout_s)
        raise ValueError(f"unknown service {service!r}")

    async def get_operation(
        self, service: str, key: str, *, timeout_s: float = 10.0
    ) -> common_pb2.GetOperationResponse:
        """GetOperation of "order", "inventory", "payment", "shipping" or "loyalty" (no idempotency key: a read)."""
        stub = {
            "order": self.order,
            "inventory": self.inventory,
            "payment": self.payment,
            "shipping": self.shipping,
            "loyalty": self.loyalty,
        }
        if service not in stub:
            raise ValueError(f"unknown service {service!r}")
        request = common_pb2.GetOperationRequest(idempotency_key=key)
        return await stub[service].GetOperation(request, timeout=timeout_s)

    async def wait_done(self, service: str, key: str, *, timeout_s: float = 30.0) -> common_pb2.GetOperationResponse:
        """Polls GetOperation (as poll_after_ms suggests) until the operation is DONE; AssertionError after
        `timeout_s`, which is generous: the suite runs on busy machines."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            reply = await self.get_operation(service, key)
            if reply.state == common_pb2.OPERATION_STATE_DONE:
                return reply
            assert reply.state == common_pb2.OPERATION_STATE_IN_PROGRESS, reply
            assert asyncio.get_running_loop().time() < deadline, f"{service} {key} not done after {timeout_s} s"
            await asyncio.sleep(max(reply.poll_after_ms, 10) / 1000)


def fault_rule(method: str = "*", **fields: object) -> control_pb2.FaultRule:
    """fault_rule("ChargePayment", error_rate=0.2, error_code="UNAVAILABLE") -> a FaultRule message."""
    return control_pb2.FaultRule(method=method, **fields)


class StubControlClient(_Channel):
    """StubControl of one stub process."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.stub = control_pb2_grpc.StubControlStub(self.channel)

    async def get_ledgers(self, order_ids: Iterable[str], timeout_s: float = 10.0) -> dict[str, OrderLedger]:
        wanted = list(order_ids)
        ledgers: dict[str, OrderLedger] = {}
        # Chunked: the server bounds orders per call, and big ledgers would pass gRPC's 4 MB message limit.
        for start in range(0, len(wanted), LEDGER_CHUNK):
            request = control_pb2.GetLedgerRequest(order_ids=wanted[start : start + LEDGER_CHUNK])
            reply = await self.stub.GetLedger(request, timeout=timeout_s)
            ledgers.update((ledger.order_id, ledger) for ledger in reply.ledgers)
        return ledgers

    async def get_ledger(self, order_id: str, timeout_s: float = 10.0) -> OrderLedger:
        return (await self.get_ledgers([order_id], timeout_s))[order_id]

    async def set_faults(self, rules: Sequence[control_pb2.FaultRule], seed: int, timeout_s: float = 10.0) -> int:
        reply = await self.stub.SetFaults(control_pb2.SetFaultsRequest(rules=rules, seed=seed), timeout=timeout_s)
        return int(reply.rules)

    async def clear_faults(self, timeout_s: float = 10.0) -> None:
        await self.stub.ClearFaults(control_pb2.ClearFaultsRequest(), timeout=timeout_s)

    async def get_stats(self, timeout_s: float = 10.0) -> dict[tuple[str, str], int]:
        """(method, code) -> calls."""
        reply = await self.stub.GetStats(control_pb2.GetStatsRequest(), timeout=timeout_s)
        return {(stat.method, stat.code): int(stat.count) for stat in reply.stats}

    async def get_operation_stats(self, timeout_s: float = 10.0) -> dict[str, tuple[int, int, int]]:
        """method -> (accepted, completed, cancelled) long-running operations."""
        reply = await self.stub.GetStats(control_pb2.GetStatsRequest(), timeout=timeout_s)
        return {op.method: (int(op.accepted), int(op.completed), int(op.cancelled)) for op in reply.operations}

    async def set_stock(self, levels: Mapping[str, int], timeout_s: float = 10.0) -> None:
        request = control_pb2.SetStockRequest(
            levels=[control_pb2.StockLevel(item_id=item_id, quantity=qty) for item_id, qty in levels.items()]
        )
        await self.stub.SetStock(request, timeout=timeout_s)

    async def get_stock(self, item_ids: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
        reply = await self.stub.GetStock(control_pb2.GetStockRequest(item_ids=list(item_ids)), timeout=timeout_s)
        return {level.item_id: level.quantity for level in reply.levels}


def merge_ledgers(into: OrderLedger, other: OrderLedger) -> None:
    """Adds `other` (the same order, seen by another process hosting other services) into `into`."""
    into.order_created |= other.order_created
    into.order_cancelled |= other.order_cancelled
    for item_id, units in other.reserved_net.items():
        into.reserved_net[item_id] += units
    into.charged_cents += other.charged_cents
    into.refunded_cents += other.refunded_cents
    into.shipment_scheduled |= other.shipment_scheduled
    into.shipment_cancelled |= other.shipment_cancelled
    into.keys.extend(other.keys)
    into.points.extend(other.points)
    # Each state comes from the one process hosting its service (unset elsewhere).
    into.order_state = into.order_state or other.order_state
    into.reservation_state = into.reservation_state or other.reservation_state
    into.shipment_state = into.shipment_state or other.shipment_state


async def get_ledgers(addresses: str | Sequence[str], order_ids: Iterable[str]) -> dict[str, OrderLedger]:
    """Ledgers of `order_ids`, merged over every stub process given (one address if all services share a process)."""
    wanted = list(order_ids)
    merged: dict[str, OrderLedger] = {order_id: OrderLedger(order_id=order_id) for order_id in wanted}
    for address in [addresses] if isinstance(addresses, str) else addresses:
        async with StubControlClient(address) as control:
            for order_id, ledger in (await control.get_ledgers(wanted)).items():
                merge_ledgers(merged[order_id], ledger)
    return merged


async def set_faults(addresses: str | Sequence[str], rules: Sequence[control_pb2.FaultRule], seed: int) -> None:
    """Installs the same plan on every process given."""
    for address in [addresses] if isinstance(addresses, str) else addresses:
        async with StubControlClient(address) as control:
            await control.set_faults(rules, seed)


async def clear_faults(addresses: str | Sequence[str]) -> None:
    for address in [addresses] if isinstance(addresses, str) else addresses:
        async with StubControlClient(address) as control:
            await control.clear_faults()


def keys_locked(table: KeyTable) -> int:
    """Keys a call holds or waits for right now in a stub's KeyTable (0 when idle: lock entries do not leak). Reads
    the table's private lock map: a test's question, not the service's."""
    return len(table._locks)
