"""The shard's gRPC face: saga.v1.SagaCoordinator and saga.v1.SagaAdmin over a Shard, plus health and reflection.

Errors become gRPC statuses here and only here (abort); bad input gets common.rpc_errors's BadRequest status, the one
every process sends. Who may call is decided before any handler runs, by the server's one common.auth interceptor;
the admin handlers name in the audit trail the principal it authenticated (current_principal()), never metadata.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from loguru import logger

from common import tracing
from common.auth import AuthPolicy, OnDenied, current_principal, server_interceptor
from common.definitions.problems import DefinitionError
from common.grpc_server import ServerLimits
from common.grpc_server import build_server as build_grpc_server
from common.grpc_server import listen as listen_on
from common.ring import EPOCH_KEY, EpochError, history_from_message, history_message
from common.rpc_errors import bad_request
from common.tls import TlsFiles
from coordinator.api import convert
from coordinator.config import Limits
from coordinator.engine import preview
from coordinator.engine.book import DefinitionRefused, Offered
from coordinator.ring.ownership import call_epoch
from coordinator.saga.errors import InvalidRequest, SagaError
from coordinator.saga.inputs import ORDER_TYPE, journal_key, split_key
from coordinator.saga.model import SagaState
from coordinator.saga.validation import check_id
from coordinator.shard import Shard
from protos.reflection import enable_reflection
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

SERVICE_NAMES = (
    saga_pb2.DESCRIPTOR.services_by_name["SagaCoordinator"].full_name,
    saga_pb2.DESCRIPTOR.services_by_name["SagaAdmin"].full_name,
    ring_pb2.DESCRIPTOR.services_by_name["RingService"].full_name,
)
WATCH_METHODS = (f"/{SERVICE_NAMES[0]}/WatchSaga",)
SAGA_STARTS = (f"/{SERVICE_NAMES[0]}/PlaceOrder", f"/{SERVICE_NAMES[0]}/StartSaga")
"""Calls that start a saga: traced under their caller's span, without a server span of the shard's (saga_trace)."""
WATCH_STREAMS_PER_PEER = 2_000
"""WatchSaga streams one peer may hold open on a shard. A router is one peer carrying all its clients' watches (each
client is bounded at the router), so this is far above one client's share; sagactl or a client calling a shard
directly counts alone."""


def server_limits(shard_max_concurrent_rpcs: int) -> ServerLimits:
    """The shard's ServerLimits: common's defaults, the shard's own RPC bound and WATCH_STREAMS_PER_PEER."""
    return ServerLimits(max_concurrent_rpcs=shard_max_concurrent_rpcs, max_streams_per_peer=WATCH_STREAMS_PER_PEER)


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: SagaError) -> NoReturn:
    """The one place our errors become gRPC statuses."""
    if isinstance(err, InvalidRequest):
        await context.abort_with_status(bad_request(err.field, err.description))
        raise AssertionError("abort_with_status returned")
    await context.abort(err.status, err.message, trailing_metadata=err.trailing())
    raise AssertionError("abort returned")


def ring_epoch(context: grpc.aio.ServicerContext[Any, Any]) -> int | None:
    """The ring epoch a router routed the call by (coordinator.ring.ownership); InvalidRequest if malformed."""
    try:
        return call_epoch(context.invocation_metadata())
    except EpochError as e:
        raise InvalidRequest(EPOCH_KEY, str(e)) from None


def saga_trace() -> str:
    """The trace a new saga's spans join: its caller's (the router's call), else this call's own span. Both are the
    current context in a SAGA_STARTS handler (common.trace_server makes a span only for a call without its caller's)."""
    return tracing.carrier()


def operator_name() -> str:
    """Who the audit trail names: the principal the interceptor authenticated ("local-dev" with auth off). The
    interceptor admits no admin call without one, so a missing principal is a wiring bug, not a caller's doing."""
    principal = current_principal()
    if principal is None:
        raise AssertionError("an admin call reached its handler without an authenticated principal")
    return principal.name


_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")


def check_saga_type(saga_type: str) -> None:
    if not saga_type:
        raise InvalidRequest("saga_type", "is required: the name of a committed definition, e.g. order")
    if not _TYPE_RE.fullmatch(saga_type):
        raise InvalidRequest("saga_type", "is a definition name: a lowercase letter, then letters, digits or _")


def target_key(order_id: str, saga_type: str, key: str, limits: Limits) -> str:
    """The journal key a read or an admin call names: order_id (the order flow), or saga_type (default "order") and
    key (any type)."""
    if key or saga_type:
        if order_id:
            raise InvalidRequest("order_id", "must be empty when key is set")
        check_saga_type(saga_type or ORDER_TYPE)
        check_id("key", key, limits)
        return journal_key(saga_type or ORDER_TYPE, key)
    check_id("order_id", order_id, limits)
    return order_id


class CoordinatorServicer(saga_pb2_grpc.SagaCoordinatorServicer):
    def __init__(self, shard: Shard) -> None:
        self._shard = shard
        self._place_order_seconds = shard.metrics.place_order_seconds

    async def PlaceOrder(
        self, request: saga_pb2.PlaceOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.PlaceOrderResponse:
        started = time.perf_counter()
        try:
            trace = saga_trace() if tracing.enabled() else ""
            placed = await self._shard.place_order(request, ring_epoch(context), trace)
        except SagaError as e:
            await abort(context, e)
        finally:
            self._place_order_seconds.observe(time.perf_counter() - started)
        return convert.place_order_response(placed.saga, placed.pending)

    async def StartSaga(
        self, request: saga_pb2.StartSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.StartSagaResponse:
        started = time.perf_counter()
        shard = self._shard
        try:
            check_saga_type(request.saga_type)
            check_id("key", request.key, shard.cfg.limits)
            if not request.HasField("input"):
                raise InvalidRequest("input", "is required: the definition's input message, as a google.protobuf.Any")
            flow = shard.book.for_new(request.saga_type)
            message = flow.input_type()
            want = flow.input_type.DESCRIPTOR.full_name
            try:
                unpacked = request.input.Unpack(message)
            except DecodeError as e:
                raise InvalidRequest("input", f"is not a valid {want}") from e
            if not unpacked:
                raise InvalidRequest(
                    "input", f"saga type {request.saga_type} takes a {want}, not {request.input.type_url!r}"
                )
            ttl_ms = request.ttl_ms if request.HasField("ttl_ms") else None
            trace = saga_trace() if tracing.enabled() else ""
            placed = await shard.start_saga(
                request.saga_type, request.key, message, ttl_ms, request.no_wait, ring_epoch(context), trace
            )
        except SagaError as e:
            await abort(context, e)
        finally:
            self._place_order_seconds.observe(time.perf_counter() - started)
        return convert.start_saga_response(placed.saga, shard.flow_of(placed.saga))

    async def GetSaga(
        self, request: saga_pb2.GetSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.Saga:
        try:
            target = target_key(request.order_id, request.saga_type, request.key, self._shard.cfg.limits)
            rec, events = await self._shard.get(target, request.include_events, ring_epoch(context))
        except SagaError as e:
            await abort(context, e)
        return convert.saga_message(rec, self._shard.cfg.shard_id, self._shard.flow_of(rec), events)

    async def ListSagas(
        self, request: saga_pb2.ListSagasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.ListSagasResponse:
        limits = self._shard.cfg.limits
        try:
            size = convert.page_size(request.page_size, limits.page_size_default, limits.page_size_max)
            cursor = convert.saga_cursor(request.page_token)
            if request.state and request.state not in SagaState._value2member_map_:
                raise InvalidRequest("state", "is not a known saga state")
            state = SagaState(request.state) if request.state else None
            recs = await self._shard.list_sagas(state, size + 1, cursor)
        except SagaError as e:
            await abort(context, e)
        resp = saga_pb2.ListSagasResponse()
        for rec in recs[:size]:
            resp.sagas.append(convert.saga_message(rec, self._shard.cfg.shard_id, self._shard.flow_of(rec)))
        if len(recs) > size:
            last = recs[size - 1]
            resp.next_page_token = convert.encode_token(f"{last.created_at_epoch_ms}:{last.saga_id}")
        return resp

    async def WatchSaga(
        self, request: saga_pb2.WatchSagaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[saga_pb2.SagaUpdate]:
        shard_id = self._shard.cfg.shard_id
        try:
            target = target_key(request.order_id, request.saga_type, request.key, self._shard.cfg.limits)
            async for rec, ev in self._shard.watch(target, ring_epoch(context)):
                flow = self._shard.flow_of(rec)
                update = saga_pb2.SagaUpdate(saga=convert.saga_message(rec, shard_id, flow))
                if ev is not None:
                    update.event.CopyFrom(convert.event_message(ev, flow))
                yield update
        except SagaError as e:
            await abort(context, e)


class AdminServicer(saga_pb2_grpc.SagaAdminServicer):
    def __init__(self, shard: Shard) -> None:
        self._shard = shard

    async def ListDeadLetters(
        self, request: saga_pb2.ListDeadLettersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.ListDeadLettersResponse:
        limits = self._shard.cfg.limits
        try:
            size = convert.page_size(request.page_size, limits.page_size_default, limits.page_size_max)
            after = convert.dead_letter_cursor(request.page_token)
            rows = await self._shard.dead_letters(request.step, request.include_closed, size + 1, after)
        except SagaError as e:
            await abort(context, e)
        resp = saga_pb2.ListDeadLettersResponse(
            dead_letters=[
                convert.dead_letter_message(r, self._shard.cfg.shard_id, self._shard.flow_of_hash(r.definition_hash))
                for r in rows[:size]
            ]
        )
        if len(rows) > size:
            resp.next_page_token = convert.encode_token(f"dl:{rows[size - 1].id}")
        return resp

    async def RetryDeadLetter(
        self, request: saga_pb2.RetryDeadLetterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.RetryDeadLetterResponse:
        who = operator_name()
        shard = self._shard
        try:
            if len(request.reason) > shard.cfg.limits.reason_max_len:
                raise InvalidRequest("reason", f"must be at most {shard.cfg.limits.reason_max_len} characters")
            if request.all:
                if request.order_id:
                    raise InvalidRequest("order_id", "must be empty when all is set")
                if request.dry_run:
                    return _previews(await shard.preview_retry_all(request.step), shard.cfg.shard_id)
                order_ids = await shard.retry_all_dead_letters(request.step, who, request.reason)
            else:
                target = target_key(request.order_id, request.saga_type, request.key, shard.cfg.limits)
                if request.dry_run:
                    plan = await shard.preview_retry(target, ring_epoch(context))
                    return _previews([plan], shard.cfg.shard_id)
                await shard.retry_dead_letter(target, who, request.reason, ring_epoch(context))
                order_ids = [split_key(target)[1]]
        except SagaError as e:
            await abort(context, e)
        return saga_pb2.RetryDeadLetterResponse(order_ids=order_ids)

    async def ResolveDeadLetter(
        self, request: saga_pb2.ResolveDeadLetterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.ResolveDeadLetterResponse:
        try:
            target = target_key(request.order_id, request.saga_type, request.key, self._shard.cfg.limits)
            if not request.reason.strip():
                raise InvalidRequest("reason", "is required: say what was done by hand")
            if len(request.reason) > self._shard.cfg.limits.reason_max_len:
                raise InvalidRequest("reason", f"must be at most {self._shard.cfg.limits.reason_max_len} characters")
            if request.dry_run:
                rec, plan = await self._shard.preview_resolve(target, ring_epoch(context))
                shard_id = self._shard.cfg.shard_id
                return saga_pb2.ResolveDeadLetterResponse(
                    saga=convert.saga_message(rec, shard_id, self._shard.flow_of(rec)),
                    preview=preview.preview_message(plan, shard_id),
                )
            rec = await self._shard.resolve_dead_letter(target, operator_name(), request.reason, ring_epoch(context))
        except SagaError as e:
            await abort(context, e)
        flow = self._shard.flow_of(rec)
        return saga_pb2.ResolveDeadLetterResponse(saga=convert.saga_message(rec, self._shard.cfg.shard_id, flow))

    async def ListDefinitions(
        self, request: saga_pb2.ListDefinitionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> saga_pb2.ListDefinitionsResponse:
        return await list_definitions(self._shard, request.include_documents)


async def list_definitions(shard: Shard, include_documents: bool) -> saga_pb2.ListDefinitionsResponse:
    """ListDefinitions as one shard answers it (the router merges its shards' answers)."""
    book = shard.book
    active = {h for h, _ in book.aliases().values()}
    usage = await book.usage()
    resp = saga_pb2.ListDefinitionsResponse()
    for d in sorted(book.definitions(), key=lambda d: d.name):
        resp.definitions.add(
            name=d.name,
            version=d.version,
            hash=d.hash,
            active=d.hash in active,
            sagas=usage.get(d.hash, (0, []))[0],
            document_json=json.dumps(d.document, sort_keys=True) if include_documents else "",
            step_ids=[s.id for s in d.steps],
        )
    return resp


def _previews(plans: list[preview.SagaPlan], shard_id: str) -> saga_pb2.RetryDeadLetterResponse:
    """A dry run's answer: the orders that would be retried and what each retry would do."""
    return saga_pb2.RetryDeadLetterResponse(
        order_ids=[split_key(p.order_id)[1] for p in plans],
        previews=[preview.preview_message(p, shard_id) for p in plans],
    )


class RingServicer(ring_pb2_grpc.RingServiceServicer):
    def __init__(self, shard: Shard) -> None:
        self._shard = shard

    async def GetRing(
        self, request: ring_pb2.GetRingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ring_pb2.GetRingResponse:
        return ring_pb2.GetRingResponse(history=history_message(self._shard.ownership.history))

    async def InstallRing(
        self, request: ring_pb2.InstallRingRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ring_pb2.InstallRingResponse:
        try:
            try:
                offered = history_from_message(request.history)
            except EpochError as e:
                raise InvalidRequest("history", str(e)) from None
            held = await self._shard.ownership.install(offered)
        except SagaError as e:
            await abort(context, e)
        return ring_pb2.InstallRingResponse(history=history_message(held))

    async def GetDefinitions(
        self, request: ring_pb2.GetDefinitionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ring_pb2.GetDefinitionsResponse:
        return ring_pb2.GetDefinitionsResponse(state=await self._definitions_state(request.with_usage))

    async def InstallDefinitions(
        self, request: ring_pb2.InstallDefinitionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ring_pb2.InstallDefinitionsResponse:
        try:
            offered = []
            for i, d in enumerate(request.definitions):
                try:
                    document = json.loads(d.document_json)
                except ValueError as e:
                    raise InvalidRequest(f"definitions[{i}].document_json", f"is not JSON: {e}") from None
                offered.append(Offered(d.hash, document))
            await self._shard.book.install(offered, dict(request.aliases), request.history_version, request.drop)
        except DefinitionError as e:
            await abort(context, DefinitionRefused(str(e)))
        except SagaError as e:
            await abort(context, e)
        return ring_pb2.InstallDefinitionsResponse(state=await self._definitions_state(False))

    async def _definitions_state(self, with_usage: bool) -> ring_pb2.DefinitionsState:
        book = self._shard.book
        state = ring_pb2.DefinitionsState(
            history_version=book.history_version,
            definitions=[
                ring_pb2.Definition(
                    hash=d.hash, name=d.name, version=d.version, document_json=json.dumps(d.document, sort_keys=True)
                )
                for d in book.definitions()
            ],
            aliases={name: h for name, (h, _) in book.aliases().items()},
        )
        if with_usage:
            for h, (count, keys) in (await book.usage()).items():
                state.usage[h] = count
                state.users[h].keys.extend(keys)
        return state


def build_server(
    shard: Shard,
    listen: str,
    tls: TlsFiles | None = None,
    limits: ServerLimits | None = None,
    auth: AuthPolicy | None = None,
    on_denied: OnDenied | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """The shard's server, bound (mutual TLS with tls's files; plaintext only on loopback or with --insecure). auth:
    the policy from common.auth.resolve_policy (None: development mode, which the caller has checked is allowed);
    on_denied counts refusals."""
    limits = limits or server_limits(shard.cfg.limits.max_concurrent_rpcs)
    interceptor = server_interceptor(auth or AuthPolicy.open_for_development(), on_denied)
    server = build_grpc_server(limits, streams=WATCH_METHODS, interceptors=[interceptor], joined=SAGA_STARTS)
    saga_pb2_grpc.add_SagaCoordinatorServicer_to_server(CoordinatorServicer(shard), server)
    saga_pb2_grpc.add_SagaAdminServicer_to_server(AdminServicer(shard), server)
    ring_pb2_grpc.add_RingServiceServicer_to_server(RingServicer(shard), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
    port = listen_on(server, listen, tls or TlsFiles())
    logger.debug("gRPC server bound to port {}", port)
    return server, port, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, status)
