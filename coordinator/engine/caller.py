"""Calls to the downstream services a definition names: one long-lived channel per address, the idempotency key in
metadata, the request built by the step's compiled mapping (common.definitions.paths). Every attempt has a deadline;
replies become CallResults for the engine.

With TLS, the channels present the shard's certificate. grpcio fixes a channel's certificate when the channel is made,
so when the files change on disk (checked at most once a second, on the next call) new channels are opened and the old
ones closed after CHANNEL_CLOSE_GRACE_S, letting the calls on them finish.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc
from loguru import logger

from common import tracing
from common.definitions.model import Call, Values
from common.definitions.model import Step as StepDef
from common.metadata import IDEMPOTENCY_KEY
from common.rpc_errors import TOMBSTONED, error_reason
from common.tls import ClientTls, TlsFiles
from coordinator.config import Services
from coordinator.saga.errors import CallResult, OperationAnswer, OperationState
from coordinator.saga.model import Action, idempotency_key
from protos.shop.v1 import common_pb2


class Caller(Protocol):
    async def call(self, values: Values, step: StepDef, action: Action, timeout_s: float) -> CallResult:
        """One attempt of the step's forward call or compensation; an OK result may be "accepted, in progress"."""

    async def get_operation(self, values: Values, step: StepDef, action: Action, timeout_s: float) -> OperationAnswer:
        """What the step's service says became of that call (its idempotency key); UNKNOWN if it cannot be asked."""

    async def close(self) -> None: ...


def rpc_attributes(service: str, method: str) -> dict[str, str]:
    """OpenTelemetry's RPC attributes of a call to a service (the engine's spans are the calls' spans)."""
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


# Keepalive lets a channel notice a dead peer (half-open TCP) instead of waiting for the attempt deadline every time.
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Any ping unacknowledged this long ends the connection. gRPC's default is 60 s, and a ping already in flight
    # (sent after a call's deadline cancels its stream) holds back the keepalive ping, so a half-open connection
    # under steady calls lived 60 s whatever keepalive_timeout_ms said: every attempt in that minute timed out.
    ("grpc.http2.ping_timeout_ms", 5_000),
    # gRPC's reconnect backoff grows to 120 s, and meanwhile every call fails at once ("failed to connect"): a few
    # seconds of network trouble burnt a compensation's whole retry policy and parked the saga. Two seconds bounds it
    # (the router does the same for its shards).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),  # retries are ours: journaled, keyed and bounded by the saga deadline
)
CHANNEL_CLOSE_GRACE_S = 60.0
"""After a certificate rotation, calls still running on the old channels get this long (a step's attempt timeout is
far shorter)."""


class GrpcCaller:
    """One channel per distinct address; one callable per (address, method), made at its first use from the
    definition's compiled request and response types (no per-call lookup beyond one dict)."""

    def __init__(self, services: Services, tls: ClientTls | None = None) -> None:
        self._services = services
        self._tls = tls or ClientTls(TlsFiles())
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._methods: dict[tuple[str, str], Any] = {}

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        address = self._services.address(endpoint)
        if address is None:
            raise UnknownService(endpoint)
        channel = self._channels.get(address)
        if channel is None:
            # Untraced channels: the engine's span of each attempt is the call's span, and its context goes in the
            # metadata (tracing.outgoing), without the cost of grpc.aio's interceptor machinery.
            channel = self._channels[address] = self._tls.channel(address, _CHANNEL_OPTIONS, traced=False)
        return channel

    def _method(self, endpoint: str, call: Call) -> Any:
        found = self._methods.get((endpoint, call.path))
        if found is None:
            found = self._methods[(endpoint, call.path)] = self._channel(endpoint).unary_unary(
                call.path,
                request_serializer=call.request_type.SerializeToString,
                response_deserializer=call.response_type.FromString,
            )
        return found

    def _get_operation_method(self, endpoint: str, path: str) -> Any:
        found = self._methods.get((endpoint, path))
        if found is None:
            found = self._methods[(endpoint, path)] = self._channel(endpoint).unary_unary(
                path,
                request_serializer=common_pb2.GetOperationRequest.SerializeToString,
                response_deserializer=common_pb2.GetOperationResponse.FromString,
            )
        return found

    def _reopen_if_rotated(self) -> None:
        if not self._tls.changed():
            return
        old = list(self._channels.values())
        self._channels = {}
        self._methods = {}
        logger.info("TLS files changed: new channels to the services; the old ones close in {}s", CHANNEL_CLOSE_GRACE_S)
        for ch in old:
            task = asyncio.create_task(ch.close(CHANNEL_CLOSE_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def call(self, values: Values, step: StepDef, action: Action, timeout_s: float) -> CallResult:
        self._reopen_if_rotated()
        forward_key = idempotency_key(values.saga_id, step.id, Action.FORWARD)
        if action is Action.FORWARD:
            call, key = step.call, forward_key
        else:
            assert step.compensation is not None, f"{step.id} has no compensation"
            call, key = step.compensation, idempotency_key(values.saga_id, step.id, action)
        method = self._method(step.endpoint, call)
        request = call.build(values, forward_key)
        metadata = ((IDEMPOTENCY_KEY, key), *tracing.outgoing())
        try:
            reply = await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            final = code is grpc.StatusCode.ABORTED and error_reason(e) == TOMBSTONED
            return CallResult(code, e.details() or "", final=final)
        if call.long_running and reply.HasField("operation") and not reply.operation.done:
            return CallResult(grpc.StatusCode.OK, in_progress=True, poll_after_ms=max(0, reply.operation.poll_after_ms))
        return CallResult(grpc.StatusCode.OK, response=reply if step.output_used else None)

    async def get_operation(self, values: Values, step: StepDef, action: Action, timeout_s: float) -> OperationAnswer:
        self._reopen_if_rotated()
        if not step.get_operation:
            return OperationAnswer(OperationState.UNKNOWN, CallResult(grpc.StatusCode.UNIMPLEMENTED, "no GetOperation"))
        method = self._get_operation_method(step.endpoint, step.get_operation)
        request = common_pb2.GetOperationRequest(idempotency_key=idempotency_key(values.saga_id, step.id, action))
        try:
            reply = await method(request, timeout=timeout_s, metadata=tracing.outgoing())
        except grpc.aio.AioRpcError as e:
            # UNIMPLEMENTED from a service without GetOperation: it cannot say, the saga goes on as before.
            return OperationAnswer(OperationState.UNKNOWN, CallResult(e.code(), e.details() or ""))
        response_type = step.call.response_type if action is Action.FORWARD and step.output_used else None
        return operation_answer(reply, response_type)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)


class UnknownService(Exception):
    """A step names a service the shard's [services] table has no address for (checked when a definition is
    accepted; a call failing this way counts as transient, like a broken channel)."""


_STATES = {
    common_pb2.OPERATION_STATE_NOT_FOUND: OperationState.NOT_FOUND,
    common_pb2.OPERATION_STATE_IN_PROGRESS: OperationState.IN_PROGRESS,
    common_pb2.OPERATION_STATE_DONE: OperationState.DONE,
}


def operation_answer(reply: common_pb2.GetOperationResponse, response_type: Any = None) -> OperationAnswer:
    """GetOperation's reply as the engine reads it; an unknown state or status code name is UNKNOWN. response_type:
    the forward call's response type when its output is used (unpacked from the answer's `response`)."""
    state = _STATES.get(reply.state, OperationState.UNKNOWN)
    if state is OperationState.DONE:
        code = grpc.StatusCode.__members__.get(reply.code)
        if code is None:
            return OperationAnswer(OperationState.UNKNOWN, CallResult(grpc.StatusCode.UNKNOWN, f"code {reply.code!r}"))
        response = None
        if response_type is not None and code is grpc.StatusCode.OK and reply.HasField("response"):
            response = response_type()
            if not reply.response.Unpack(response):
                response = None
        return OperationAnswer(state, CallResult(code, reply.message, response=response))
    return OperationAnswer(state, poll_after_ms=max(0, reply.poll_after_ms))
