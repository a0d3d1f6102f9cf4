"""StubControl: the control plane of one stub process (faults, ledgers, statistics, stock).

It sees only the services hosted by its own process; split processes each serve their own StubControl. Control calls
are never subject to faults and need no idempotency key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from loguru import logger

from protos.service_stubs.v1 import control_pb2
from service_stubs.config import StubConfig
from service_stubs.errors import InvalidArgument, StubError, abort
from service_stubs.faults import FaultInjector, FaultPlan, FaultRule
from service_stubs.idempotency import ShopService
from service_stubs.inventory import InventoryService
from service_stubs.ledger import order_ledger
from service_stubs.stats import CallStats, OperationEvent
from service_stubs.validation import require_id


class StubControlService:
    """Implements control_pb2_grpc.StubControlServicer (registered with add_StubControlServicer_to_server)."""

    grpc_service = "service_stubs.v1.StubControl"

    def __init__(
        self, services: Sequence[ShopService[Any]], faults: FaultInjector, stats: CallStats, config: StubConfig
    ) -> None:
        self._services = tuple(services)
        self._faults = faults
        self._stats = stats
        self._config = config

    async def SetFaults(
        self, request: control_pb2.SetFaultsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.SetFaultsResponse:
        try:
            if len(request.rules) > self._config.max_fault_rules:
                raise InvalidArgument("rules", f"more than {self._config.max_fault_rules} rules")
            rules = [FaultRule.from_proto(rule, index) for index, rule in enumerate(request.rules)]
        except StubError as error:
            await abort(context, error)
        self._faults.install(FaultPlan(rules, request.seed))
        logger.info("fault plan installed: {} rules, seed {}", len(rules), request.seed)
        return control_pb2.SetFaultsResponse(rules=len(rules))

    async def ClearFaults(
        self, request: control_pb2.ClearFaultsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.ClearFaultsResponse:
        self._faults.clear()
        logger.info("fault plan cleared")
        return control_pb2.ClearFaultsResponse()

    async def GetLedger(
        self, request: control_pb2.GetLedgerRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetLedgerResponse:
        order_ids = ([request.order_id] if request.order_id else []) + list(request.order_ids)
        try:
            if len(order_ids) > self._config.max_ledger_orders:
                raise InvalidArgument("order_ids", f"more than {self._config.max_ledger_orders} orders")
            for index, order_id in enumerate(request.order_ids):
                require_id(order_id, f"order_ids[{index}]")
        except StubError as error:
            await abort(context, error)
        ledgers = [order_ledger(order_id, self._services) for order_id in order_ids]
        return control_pb2.GetLedgerResponse(ledgers=ledgers)

    async def GetStats(
        self, request: control_pb2.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetStatsResponse:
        stats = [
            control_pb2.MethodStat(method=method, code=code, count=count)
            for method, code, count in self._stats.snapshot()
        ]
        operations = [
            control_pb2.OperationStat(
                method=method,
                accepted=events[OperationEvent.ACCEPTED],
                completed=events[OperationEvent.COMPLETED],
                cancelled=events[OperationEvent.CANCELLED],
            )
            for method, events in self._stats.operations().items()
        ]
        return control_pb2.GetStatsResponse(stats=stats, operations=operations)

    async def SetStock(
        self, request: control_pb2.SetStockRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.SetStockResponse:
        inventory = next((s for s in self._services if isinstance(s, InventoryService)), None)
        try:
            if inventory is None:
                raise StubError(grpc.StatusCode.FAILED_PRECONDITION, "this process does not serve inventory")
            if len(request.levels) > self._config.max_batch_rows:
                raise InvalidArgument("levels", f"more than {self._config.max_batch_rows} levels")
            levels: dict[str, int] = {}
            for index, level in enumerate(request.levels):
                require_id(level.item_id, f"levels[{index}].item_id")
                if level.quantity < 0:
                    raise InvalidArgument(f"levels[{index}].quantity", "must be >= 0")
                levels[level.item_id] = level.quantity
            await inventory.store.commit([], inventory.set_levels(levels))
        except StubError as error:
            await abort(context, error)
        logger.info("stock set for {} items", len(levels))
        return control_pb2.SetStockResponse()

    async def GetStock(
        self, request: control_pb2.GetStockRequest, context: grpc.aio.ServicerContext
    ) -> control_pb2.GetStockResponse:
        inventory = next((s for s in self._services if isinstance(s, InventoryService)), None)
        try:
            if inventory is None:
                raise StubError(grpc.StatusCode.FAILED_PRECONDITION, "this process does not serve inventory")
            if len(request.item_ids) > self._config.max_batch_rows:
                raise InvalidArgument("item_ids", f"more than {self._config.max_batch_rows} items")
            for index, item_id in enumerate(request.item_ids):
                require_id(item_id, f"item_ids[{index}]")
            await inventory.store.barrier()  # what is read is durable, as every read here
        except StubError as error:
            await abort(context, error)
        return control_pb2.GetStockResponse(
            levels=[control_pb2.StockLevel(item_id=i, quantity=inventory.level(i)) for i in request.item_ids]
        )
