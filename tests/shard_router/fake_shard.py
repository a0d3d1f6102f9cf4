"""A fake coordinator shard for router tests: a real grpc.aio server on 127.0.0.1 serving saga.v1 from dicts.

It records every call (method, order id, metadata, time remaining) and can be told to fail a method with a given
status, details and trailing metadata, or to answer slowly. Its page tokens are offsets, stable as long as no saga is
added while a test walks the pages, like a real shard's keyset tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.saga.v1 import saga_pb2, saga_pb2_grpc

TERMINAL = {saga_pb2.SAGA_STATE_SUCCEEDED, saga_pb2.SAGA_STATE_FAILED, saga_pb2.SAGA_STATE_RESOLVED}


@dataclass
class Call:
    method: str
    order_id: str
    metadata: dict[str, Any]
    time_remaining: float | None


@dataclass
class Failure:
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, Any], ...] = ()
    times: int = 1_000_000


@dataclass
class FakeShard(saga_pb2_grpc.SagaCoordinatorServicer, saga_pb2_grpc.SagaAdminServicer):
    shard_id: str
    sagas: dict[str, saga_pb2.Saga] = field(default_factory=dict)
    dead_letters: dict[str, saga_pb2.DeadLetter] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    place_delay_s: float = 0.0
    get_delay_s: float = 0.0
    reply_metadata: tuple[tuple[str, Any], ...] = ()
    address: str = ""
    _server: Any = None
    _clock_ns: int = 0

    # -- test controls ----------------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        saga_pb2_grpc.add_SagaCoordinatorServicer_to_server(self, server)
        saga_pb2_grpc.add_SagaAdminServicer_to_server(self, server)
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self.address = f"127.0.0.1:{bound}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    def add_saga(
        self, order_id: str, created_ns: int | None = None, state: int = saga_pb2.SAGA_STATE_SUCCEEDED
    ) -> saga_pb2.Saga:
        if created_ns is None:
            created_ns = time.time_ns() + self._next()
        ts = Timestamp()
        ts.FromNanoseconds(created_ns)
        saga = saga_pb2.Saga(
            saga_id=f"saga-{order_id}", order_id=order_id, state=state, created_at=ts, shard_id=self.shard_id
        )
        self.sagas[order_id] = saga
        return saga

    def add_dead_letter(self, order_id: str, parked_ns: int) -> None:
        self.add_saga(order_id, parked_ns, saga_pb2.SAGA_STATE_DEAD_LETTERED)
        ts = Timestamp()
        ts.FromNanoseconds(parked_ns)
        self.dead_letters[order_id] = saga_pb2.DeadLetter(
            saga_id=f"saga-{order_id}", order_id=order_id, parked_at=ts, shard_id=self.shard_id
        )

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _next(self) -> int:
        self._clock_ns += 1
        return self._clock_ns

    async def _enter(self, method: str, order_id: str, context: Any) -> None:
        md = {k: v for k, v in context.invocation_metadata()}
        self.calls.append(Call(method, order_id, md, context.time_remaining()))
        failure = self.failures.get(method)
        if failure is not None and failure.times > 0:
            failure.times -= 1
            await context.abort(failure.code, failure.details, failure.trailing_metadata)
        if self.reply_metadata:
            context.set_trailing_metadata(self.reply_metadata)

    # -- saga.v1.SagaCoordinator ---------------------------------------------------------------------------------------

    async def PlaceOrder(self, request: saga_pb2.PlaceOrderRequest, context: Any) -> saga_pb2.PlaceOrderResponse:
        await self._enter("PlaceOrder", request.order_id, context)
        if not request.order_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "order_id: required")
        saga = self.sagas.get(request.order_id)
        if saga is None:
            # Like a real shard, the saga exists (is durable) only after some work; a slow shard shows the window.
            await asyncio.sleep(self.place_delay_s)
            saga = self.sagas.get(request.order_id) or self.add_saga(request.order_id)
        return saga_pb2.PlaceOrderResponse(
            order_id=saga.order_id, status=saga_pb2.SUCCESS, saga_id=saga.saga_id, state=saga.state
        )

    async def StartSaga(self, request: saga_pb2.StartSagaRequest, context: Any) -> saga_pb2.StartSagaResponse:
        key = journal_key(request.saga_type, request.key)
        await self._enter("StartSaga", key, context)
        saga = self.sagas.get(key) or self.add_saga(key)
        return saga_pb2.StartSagaResponse(
            saga_type=request.saga_type, key=request.key, saga_id=saga.saga_id, state=saga.state
        )

    async def GetSaga(self, request: saga_pb2.GetSagaRequest, context: Any) -> saga_pb2.Saga:
        # Called with order_id, or saga_type and key (recorded as the shard's journal key, "<type>/<key>").
        key = request.order_id or journal_key(request.saga_type or "order", request.key)
        await self._enter("GetSaga", key, context)
        await asyncio.sleep(self.get_delay_s)
        saga = self.sagas.get(key)
        if saga is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no saga for order {key!r}")
        return saga

    async def ListSagas(self, request: saga_pb2.ListSagasRequest, context: Any) -> saga_pb2.ListSagasResponse:
        await self._enter("ListSagas", "", context)
        items = sorted(
            (s for s in self.sagas.values() if request.state in (0, s.state)),
            key=lambda s: (s.created_at.ToNanoseconds(), s.saga_id),
            reverse=True,
        )
        page, token = _page(items, request.page_size, request.page_token)
        return saga_pb2.ListSagasResponse(sagas=page, next_page_token=token)

    async def WatchSaga(self, request: saga_pb2.WatchSagaRequest, context: Any) -> AsyncIterator[saga_pb2.SagaUpdate]:
        await self._enter("WatchSaga", request.order_id, context)
        saga = self.sagas.get(request.order_id)
        if saga is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no saga for order {request.order_id!r}")
        yield saga_pb2.SagaUpdate(saga=saga)
        for seq in (1, 2):
            yield saga_pb2.SagaUpdate(saga=saga, event=saga_pb2.SagaEvent(seq=seq, kind="state", state=saga.state))

    # -- saga.v1.SagaAdmin ---------------------------------------------------------------------------------------------

    async def ListDeadLetters(
        self, request: saga_pb2.ListDeadLettersRequest, context: Any
    ) -> saga_pb2.ListDeadLettersResponse:
        await self._enter("ListDeadLetters", "", context)
        items = sorted(
            (d for d in self.dead_letters.values() if request.include_closed or not d.closed),
            key=lambda d: (d.parked_at.ToNanoseconds(), d.saga_id),
        )
        page, token = _page(items, request.page_size, request.page_token)
        return saga_pb2.ListDeadLettersResponse(dead_letters=page, next_page_token=token)

    async def RetryDeadLetter(
        self, request: saga_pb2.RetryDeadLetterRequest, context: Any
    ) -> saga_pb2.RetryDeadLetterResponse:
        await self._enter("RetryDeadLetter", request.order_id, context)
        if request.all:
            ids = sorted(o for o, d in self.dead_letters.items() if not d.closed)
        elif request.order_id not in self.sagas:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no saga for order {request.order_id!r}")
            raise AssertionError
        elif request.order_id not in self.dead_letters or self.dead_letters[request.order_id].closed:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "saga is not dead-lettered")
            raise AssertionError
        else:
            ids = [request.order_id]
        if request.dry_run:
            previews = [
                saga_pb2.SagaPreview(
                    order_id=o,
                    saga_id=f"saga-{o}",
                    shard_id=self.shard_id,
                    state_now=saga_pb2.SAGA_STATE_DEAD_LETTERED,
                    end_state=saga_pb2.SAGA_STATE_FAILED,
                )
                for o in ids
            ]
            return saga_pb2.RetryDeadLetterResponse(order_ids=ids, previews=previews)
        for o in ids:
            self.dead_letters[o].closed = True
            self.sagas[o].state = saga_pb2.SAGA_STATE_COMPENSATING
        return saga_pb2.RetryDeadLetterResponse(order_ids=ids)

    async def ResolveDeadLetter(
        self, request: saga_pb2.ResolveDeadLetterRequest, context: Any
    ) -> saga_pb2.ResolveDeadLetterResponse:
        await self._enter("ResolveDeadLetter", request.order_id, context)
        saga = self.sagas.get(request.order_id)
        if saga is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no saga for order {request.order_id!r}")
        saga.state = saga_pb2.SAGA_STATE_RESOLVED
        return saga_pb2.ResolveDeadLetterResponse(saga=saga)


def journal_key(saga_type: str, key: str) -> str:
    """Where a real shard stores the saga of a type and key: the order flow under its order id, others as "T/K"."""
    return key if saga_type == "order" else f"{saga_type}/{key}"


def _page(items: list[Any], page_size: int, token: str) -> tuple[list[Any], str]:
    size = page_size or 50
    start = int(token) if token else 0
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")
