"""The server span of every traced gRPC call (grpc.aio): the caller's context read by the configured propagators, a
SERVER span named for the method under it (the configured sampler decides; common.trace_spans makes it), current in
the handler.

Why not opentelemetry-instrumentation-grpc's server interceptor: measured on this machine (an echo server on uvloop
behind one pass-through interceptor, 5,000 calls at c=32 carrying an unsampled traceparent), it added 240-290 us of
server CPU a call even when the sampler recorded nothing (386-490 us without it), about as much as an empty call
costs: a wrapt proxy around every ServicerContext, two context managers, the metadata copied to a dict and the peer
parsed for attributes of a span that is then dropped. Here an unsampled call costs one extract and one attach.

What a recorded span carries, as the instrumentation's did: rpc.system, rpc.service, rpc.method, rpc.grpc.status_code
(the code the handler ended with, aborts included); an error status (with the code's name only, never the handler's
message) for the codes the semantic conventions count as the server's fault. net.peer.ip and net.peer.port only when
the caller sent no span context: a traced caller's own span, the parent, already says who called (its resource), and
the two attributes cost each span about 20 us to read, set and encode. Not kept: rpc.user_agent and net.peer.name
(grpc's version string; "localhost" for loopback peers).

Joined methods (a shard's PlaceOrder and StartSaga): a call that comes with its caller's span context makes no server
span; the caller's context is current in the handler instead. Their handlers start a saga whose own spans hang under
the caller's span anyway (a span of the shard's would end with the call and die with the process if it is killed
mid-saga), so the server span said only what the caller's span already says (method, status, nearly the same
duration) at the price of a recorded and exported span per saga. A call without a caller's context still gets its
server span, so that the saga's spans have one trace to join.

Each method's handler is wrapped once (not on every call), as common.auth does.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.trace_spans import RecordedSpan, Recorder

__all__ = ["ServerSpans"]

SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
"""Codes that mark a server span an error (OpenTelemetry's RPC semantic conventions; the others are the caller's)."""


@functools.cache
def _fixed(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


EXTRACTED_CACHED = 4096
"""Callers' contexts remembered by the header values they were read from (see _parent)."""

_extracted: dict[tuple[Any, ...], otel_context.Context] = {}


def _parent(context: grpc.aio.ServicerContext[Any, Any]) -> otel_context.Context:
    """The caller's context, as the configured propagators read the call's metadata. With the W3C propagators (the
    default: tracecontext and baggage), remembered by the values of the headers they read: a saga whose trace is not
    sampled makes all its calls under one context, so a service reads the same traceparent at each step, and an
    untraced caller sends none at all; each is read once. A Context is immutable, so the one read before serves again.
    Other propagators (B3, Jaeger, ...) may read headers they do not list in `fields`: they read every call afresh."""
    # Text metadata only (binary values are no propagator's); the last value of a key wins.
    headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    textmap = propagate.get_global_textmap()
    fields = _w3c_fields(textmap)
    if fields is None:
        return textmap.extract(headers)
    key = (textmap, *(headers.get(field) for field in fields))
    parent = _extracted.get(key)
    if parent is None:
        # From an empty context, so that what is remembered depends on the headers alone (a baggage propagator
        # listed first would otherwise start from the current one).
        parent = textmap.extract(headers, context=otel_context.Context())
        if len(_extracted) >= EXTRACTED_CACHED:
            _extracted.clear()
        _extracted[key] = parent
    return parent


@functools.lru_cache(maxsize=8)
def _w3c_fields(textmap: Any) -> tuple[str, ...] | None:
    """The headers the W3C propagators read (traceparent, tracestate, baggage: exactly the ones they list), if
    textmap is made of them only; None for any other (a propagator may read more than its `fields` lists)."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    known = (TraceContextTextMapPropagator, W3CBaggagePropagator)
    parts = getattr(textmap, "_propagators", None) if type(textmap) is CompositePropagator else [textmap]
    if not parts or any(type(p) not in known for p in parts):
        return None
    return tuple(sorted({field.lower() for p in parts for field in p.fields}))


def _start(
    recorder: Recorder, method: str, context: grpc.aio.ServicerContext[Any, Any], joined: bool = False
) -> tuple[Any, Any]:
    parent = _parent(context)
    traced_caller = trace.get_current_span(parent).get_span_context().is_valid
    if joined and traced_caller:
        return None, otel_context.attach(parent)  # no span of its own: the caller's is the saga's parent
    span = recorder.start(method, parent, SpanKind.SERVER, _fixed(method))
    if not traced_caller and span.is_recording():
        peer = context.peer()
        if peer.startswith(("ipv4:", "ipv6:")):
            ip, _, port = peer.split(",")[0].split(":", 1)[1].rpartition(":")
            span.set_attributes({"net.peer.ip": unquote(ip), "net.peer.port": port})
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def _end(span: RecordedSpan | None, token: Any, context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> None:
    otel_context.detach(token)
    if span is None:
        return
    if span.is_recording():
        code = context.code()
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class ServerSpans(grpc.aio.ServerInterceptor):
    """A span per call of every unary-request method whose service is not in `untraced` (see the module's doc);
    `joined`: full method names ("/pkg.Service/Method") whose calls join their caller's span instead."""

    def __init__(self, recorder: Recorder, untraced: frozenset[str], joined: frozenset[str] = frozenset()) -> None:
        self._recorder = recorder
        self._untraced = untraced
        self._joined = joined
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # the same handler wrapped the same way: not rebuilt on every call
        if handler is None or handler.request_streaming or method.lstrip("/").partition("/")[0] in self._untraced:
            return handler
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        recorder = self._recorder
        joined = method in self._joined
        if not handler.response_streaming:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                span, token = _start(recorder, method, context, joined)
                failed = True
                try:
                    reply = await behavior(request, context)
                    failed = False
                    return reply
                finally:
                    _end(span, token, context, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        stream = handler.unary_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            span, token = _start(recorder, method, context, joined)
            failed = True
            try:
                replies = stream(request, context)
                if hasattr(replies, "__aiter__"):
                    async for reply in replies:
                        yield reply
                else:  # a handler that writes with context.write() and returns
                    await replies
                failed = False
            finally:
                _end(span, token, context, failed)

        return grpc.unary_stream_rpc_method_handler(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
