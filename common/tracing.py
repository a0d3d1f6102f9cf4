"""Distributed traces (OpenTelemetry): off unless an OTLP endpoint is named, and then the same in every process.

Contract:

- setup(service) turns tracing on when the standard environment names an OTLP endpoint
  (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT) and OTEL_SDK_DISABLED is not "true" and
  OTEL_TRACES_EXPORTER is not "none". The exporter speaks the protocol the specification's variables name
  (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else "grpc"): "grpc" or "http/protobuf"; any
  other value is a TracingConfigError at start-up, never a process that silently exports nothing. Everything else
  about export is the OpenTelemetry SDK's own reading of OTEL_* (endpoint paths, headers, certificate, compression,
  timeout, sampler, batch sizes, service name, resource attributes, OTEL_PROPAGATORS): nothing here re-implements it.
  service becomes service.name (instance: service.instance.id, e.g. the shard id) unless OTEL_SERVICE_NAME (or
  service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise.
- Off (the default), nothing is installed: no interceptor on any server or channel, no span objects, no context reads.
  The functions below answer "nothing" cheaply, so callers need no `if`.
- On, every gRPC server and channel built through common.grpc_server / common.tls carries OpenTelemetry's own gRPC
  interceptors (opentelemetry-instrumentation-grpc): the caller's context in, child spans and their context out, in
  the headers of the configured propagators (OTEL_PROPAGATORS: W3C traceparent, tracestate and baggage by default).
  Health checks, reflection and the ring service (routers' bookkeeping) are not traced, nor services named in
  OTEL_PYTHON_GRPC_EXCLUDED_SERVICES.
- Spans carry identifiers and outcomes only. Nothing here or in the callers puts request payloads on a span: the
  instrumentation records method, peer and status code; the coordinator adds saga id, order id, step, action, attempt,
  outcome code.
- A saga outlives its request: carrier()/restore() turn a context into the string the journal keeps (every header
  the configured propagators inject, as a JSON object) and back, so spans made after a restart join the same trace.
  restore() still reads what journals kept before: a bare traceparent, then tracestate after a newline.
- Log lines logged inside a span carry trace_id (common.logs asks current_trace_id()).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

__all__ = [
    "ENDPOINT_VARIABLES",
    "PROTOCOLS",
    "PROTOCOL_VARIABLES",
    "TracingConfigError",
    "carrier",
    "client_interceptors",
    "context_keys",
    "current_trace_id",
    "enabled",
    "outcome",
    "outgoing",
    "protocol",
    "remote_parent",
    "restore",
    "server_interceptors",
    "setup",
    "shutdown",
    "span",
    "trace_id_of",
    "wanted",
]

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
"""The OTLP protocol's variables in the specification's order: the first one set wins."""
PROTOCOLS = ("grpc", "http/protobuf")
"""The protocols there is an exporter for, the default first (the specification's third, http/json, has none in
Python: a process asked for it must not start and export nothing)."""
UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
    "ring.v1.RingService",
    "service_stubs.v1.StubControl",
)
"""Calls that are bookkeeping, not work: probes, debugging, routers' ring exchange, the stubs' test controls."""

_state: dict[str, Any] = {}
"""The process's tracing once setup() turned it on: provider, tracer, interceptors. Empty: off."""


class TracingConfigError(ValueError):
    """The environment asks for traces in a way this process cannot export them (the message names the variable)."""


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module's contract)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "none" in exporters or "otlp" not in exporters:
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def protocol(environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP protocol the environment names, one of PROTOCOLS; TracingConfigError for any other. An empty variable
    counts as unset and case does not matter, as the specification says of every OTEL_* variable."""
    for name in PROTOCOL_VARIABLES:
        value = environ.get(name, "").strip().lower()
        if not value:
            continue
        if value not in PROTOCOLS:
            accepted = " or ".join(f'"{p}"' for p in PROTOCOLS)
            raise TracingConfigError(f"{name}={environ[name]!r} is not supported: traces are exported over {accepted}")
        return value
    return PROTOCOLS[0]


def setup(service: str, instance: str = "", environ: Mapping[str, str] = os.environ) -> bool:
    """Turns tracing on for this process if the environment asks for it; returns whether it is on. Call once, before
    any server or channel is built. The SDK flushes what it holds at exit (a SIGKILL loses at most the last batch).
    TracingConfigError if the environment names an OTLP protocol there is no exporter for."""
    if _state or not wanted(environ):
        return bool(_state)
    exporter = _exporter(protocol(environ))
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    attributes = {} if named else {SERVICE_NAME: service}
    if instance:
        attributes["service.instance.id"] = instance
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    excluded = set(UNTRACED_SERVICES)
    excluded.update(s.strip() for s in environ.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", "").split(",") if s.strip())
    traced = filters.negate(filters.any_of(*(filters.service_name(s) for s in sorted(excluded))))
    _state.update(
        provider=provider,
        tracer=provider.get_tracer("saga-coordinator"),
        server=[aio_server_interceptor(tracer_provider=provider, filter_=traced)],  # type: ignore[no-untyped-call]
        client=aio_client_interceptors(tracer_provider=provider, filter_=traced),  # type: ignore[no-untyped-call]
    )
    return True


def _exporter(over: str) -> Any:
    """The SDK's OTLP span exporter for protocol `over`, configured by the SDK from OTEL_* (its endpoint too: over
    http/protobuf the traces variable as given, the general one with /v1/traces appended)."""
    if over == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

        return HttpSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

    return GrpcSpanExporter()


def enabled() -> bool:
    return bool(_state)


def shutdown() -> None:
    """Flushes and stops export (also done at interpreter exit); tracing is off afterwards."""
    provider = _state.get("provider")
    _state.clear()
    if provider is not None:
        provider.shutdown()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """OpenTelemetry's server interceptor when tracing is on (first in the chain, so refused calls are traced too)."""
    return list(_state.get("server", ()))


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's client interceptors when tracing is on: a span per call, its context in the call's metadata."""
    return list(_state.get("client", ()))


def carrier() -> str:
    """The current context as the journal keeps it: what the configured propagators inject ("" when off, or when
    they inject nothing: outside any span and without baggage)."""
    if not _state:
        return ""
    return _kept(_injected(None))


def restore(kept: str) -> Any:
    """The context carrier() or remote_parent() kept, to parent spans on, as the configured propagators read it
    (None when off or nothing was kept)."""
    if not _state or not kept:
        return None
    from opentelemetry import propagate

    return propagate.extract(_headers(kept))


def outgoing() -> tuple[tuple[str, str], ...]:
    """The current context as gRPC metadata, for a call made without the client interceptor; () when off or outside
    any span. The configured propagators write it: nothing here formats headers."""
    if not _state:
        return ()
    # gRPC refuses metadata keys with capitals; header names, all a propagator knows, are case-insensitive.
    return tuple((key.lower(), value) for key, value in _injected(None).items())


def context_keys() -> frozenset[str]:
    """The metadata keys the configured propagators read and write (traceparent, tracestate, baggage by default): a
    hop that replaces its caller's context with its own drops these. Empty when off."""
    if not _state:
        return frozenset()
    from opentelemetry import propagate

    return frozenset(key.lower() for key in propagate.get_global_textmap().fields)


def remote_parent(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's context from a call's invocation metadata, as carrier() keeps it ("" if none came, or off): read
    and written again by the configured propagators, so a saga keeps whatever they carry (tracestate, baggage, B3).

    A saga's spans hang under the caller's span (the router's call), not under the shard's own server span: that one
    ends only with the PlaceOrder call, and is lost with the process if the shard is killed before."""
    if not _state or not metadata:
        return ""
    from opentelemetry import propagate, trace

    # As the gRPC instrumentation's server interceptor reads it (the last value of a key wins; binary ones are no
    # propagator's).
    context = propagate.extract({key: value for key, value in metadata if isinstance(value, str)})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return ""  # no caller's span (baggage alone, say): the saga's spans join this call's own, which carries it
    return _kept(_injected(context))


def _injected(context: Any) -> dict[str, str]:
    """What the configured propagators write for context (None: the current one)."""
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers, context=context)
    return headers


def _kept(headers: Mapping[str, str]) -> str:
    return json.dumps(headers, separators=(",", ":"), sort_keys=True) if headers else ""


def _headers(kept: str) -> dict[str, str]:
    """The headers a kept context holds. One that does not parse holds none (the saga's spans then start a trace of
    their own): a journal row is never refused for its trace context."""
    if not kept.startswith("{"):
        # Journal rows written before the whole carrier was kept: traceparent, then tracestate after a newline.
        parent, _, state = kept.partition("\n")
        return {"traceparent": parent, **({"tracestate": state} if state else {})}
    try:
        headers = json.loads(kept)
    except ValueError:
        return {}
    if not isinstance(headers, dict):
        return {}
    return {str(key): value for key, value in headers.items() if isinstance(value, str)}


@contextlib.contextmanager
def span(name: str, parent: Any, attributes: Mapping[str, Any], client: bool = False) -> Iterator[Any]:
    """A span named `name` under `parent` (restore()'s context; None: a root or the current span), current inside the
    block together with the rest of parent (its baggage: outgoing() carries it on); yields the span (None when tracing
    is off). client: the span of an outgoing call (kind CLIENT). An exception leaving the block is recorded on it."""
    tracer = _state.get("tracer")
    if tracer is None:
        yield None
        return
    from opentelemetry import context
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    # Made current first: given as start_as_current_span's context, parent would only name the span's parent, and
    # the span would be current in this task's context, without what else parent holds.
    token = None if parent is None else context.attach(parent)
    try:
        with tracer.start_as_current_span(name, kind=kind, attributes=dict(attributes)) as s:
            yield s
    finally:
        if token is not None:
            context.detach(token)


def outcome(span: Any, code: str, ok: bool) -> None:
    """Marks span (from span(); None: nothing) with the attempt's status code name, as an error unless ok."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("saga.outcome", code)
    span.set_attribute(
        "rpc.grpc.status_code", grpc.StatusCode[code].value[0] if code in grpc.StatusCode.__members__ else 2
    )
    if not ok:
        span.set_status(Status(StatusCode.ERROR, code))


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" when off or outside any sampled span."""
    if not _state:
        return ""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def trace_id_of(kept: str) -> str:
    """The trace id of a kept context (32 hex digits; "" if it has none, or off): for a saga's log lines outside its
    spans, whatever propagator kept it."""
    context = restore(kept)
    if context is None:
        return ""
    from opentelemetry import trace

    ctx = trace.get_current_span(context).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
