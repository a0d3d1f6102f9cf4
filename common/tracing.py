"""Distributed traces (OpenTelemetry): off unless an OTLP endpoint is named, and then the same in every process.

Contract:

- setup(service) turns tracing on when the standard environment names an OTLP endpoint
  (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT) and OTEL_SDK_DISABLED is not "true" and
  OTEL_TRACES_EXPORTER is not "none". Everything else about export is the OpenTelemetry SDK's own reading of OTEL_*
  (headers, certificate, compression, timeout, sampler, batch sizes, service name, resource attributes): nothing here
  re-implements it. service becomes service.name (instance: service.instance.id, e.g. the shard id) unless
  OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) says otherwise.
- Off (the default), nothing is installed: no interceptor on any server or channel, no span objects, no context reads.
  The functions below answer "nothing" cheaply, so callers need no `if`.
- On, every gRPC server and channel built through common.grpc_server / common.tls carries OpenTelemetry's own gRPC
  interceptors (opentelemetry-instrumentation-grpc): W3C traceparent in, child spans and traceparent out. Health checks,
  reflection and the ring service (routers' bookkeeping) are not traced, nor services named in
  OTEL_PYTHON_GRPC_EXCLUDED_SERVICES.
- Spans carry identifiers and outcomes only. Nothing here or in the callers puts request payloads on a span: the
  instrumentation records method, peer and status code; the coordinator adds saga id, order id, step, action, attempt,
  outcome code.
- A saga outlives its request: carrier()/restore() turn a context into the short string the journal keeps
  (traceparent, then tracestate after a newline) and back, so spans made after a restart join the same trace.
- Log lines logged inside a span carry trace_id (common.logs asks current_trace_id()).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

__all__ = [
    "ENDPOINT_VARIABLES",
    "carrier",
    "client_interceptors",
    "current_trace_id",
    "enabled",
    "outcome",
    "outgoing",
    "remote_parent",
    "restore",
    "server_interceptors",
    "setup",
    "shutdown",
    "span",
    "trace_id_of",
]

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
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


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (see the module's contract)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "none" in exporters or "otlp" not in exporters:
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def setup(service: str, instance: str = "", environ: Mapping[str, str] = os.environ) -> bool:
    """Turns tracing on for this process if the environment asks for it; returns whether it is on. Call once, before
    any server or channel is built. The SDK flushes what it holds at exit (a SIGKILL loses at most the last batch)."""
    if _state or not wanted(environ):
        return bool(_state)
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
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
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
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
    """OpenTelemetry's client interceptors when tracing is on: a span per call, traceparent in its metadata."""
    return list(_state.get("client", ()))


def carrier() -> str:
    """The current span's context as the journal keeps it ("" when off or outside any span)."""
    if not _state:
        return ""
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    parent = headers.get("traceparent", "")
    state = headers.get("tracestate", "")
    return f"{parent}\n{state}" if parent and state else parent


def restore(kept: str) -> Any:
    """The context carrier() kept, to parent spans on (None when off or nothing was kept)."""
    if not _state or not kept:
        return None
    from opentelemetry import propagate

    parent, _, state = kept.partition("\n")
    return propagate.extract({"traceparent": parent, **({"tracestate": state} if state else {})})


def outgoing() -> tuple[tuple[str, str], ...]:
    """The current span's context as gRPC metadata (traceparent, tracestate), for a call made without the client
    interceptor; () when off or outside any span. The SDK's propagator writes it: nothing here formats headers."""
    if not _state:
        return ()
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return tuple(headers.items())


def remote_parent(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's context from a call's invocation metadata, as carrier() keeps it ("" if none came, or off).

    A saga's spans hang under the caller's span (the router's call), not under the shard's own server span: that one
    ends only with the PlaceOrder call, and is lost with the process if the shard is killed before."""
    if not _state or not metadata:
        return ""
    parent = state = ""
    for key, value in metadata:
        if key == "traceparent":
            parent = str(value)
        elif key == "tracestate":
            state = str(value)
    return f"{parent}\n{state}" if parent and state else parent


@contextlib.contextmanager
def span(name: str, parent: Any, attributes: Mapping[str, Any], client: bool = False) -> Iterator[Any]:
    """A span named `name` under `parent` (restore()'s context; None: a root or the current span), current inside the
    block; yields it (None when tracing is off). client: the span of an outgoing call (kind CLIENT). An exception
    leaving the block is recorded on it."""
    tracer = _state.get("tracer")
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=dict(attributes)) as s:
        yield s


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
    """The trace id inside a kept context ("" if none): for a saga's log lines outside its spans."""
    parts = kept.split("-", 3)
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
