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
- On, every gRPC server built through common.grpc_server makes a server span per call under the caller's context
  (common.trace_server, on the OpenTelemetry API), and every channel built through common.tls with traced=True
  carries OpenTelemetry's client interceptors (opentelemetry-instrumentation-grpc), in the headers of the configured
  propagators (OTEL_PROPAGATORS: W3C traceparent, tracestate and baggage by default).
- Sampling is the SDK's (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG), except that a saga that goes wrong is
  exported whatever it says (saga(), common.trace_keep).
- The spans this project makes itself (server spans, a saga's, span()) are common.trace_spans': an implementation of
  the API's Span handed to the SDK's span processor, finished, when it ends (ids, sampler, batching, encoding and
  export stay the SDK's). The client interceptors' spans are the SDK's own.
  Health checks, reflection and the ring service (routers' bookkeeping) are not traced, nor services named in
  OTEL_PYTHON_GRPC_EXCLUDED_SERVICES.
- Spans carry identifiers and outcomes only. Nothing here or in the callers puts request payloads on a span: a
  server span records method, peer and status code; the coordinator adds saga id, order id, step and attempt (the
  action is in the span's name, the outcome is its status code).
- A saga outlives its request: carrier()/restore() turn a context into the string the journal keeps (every header
  the configured propagators inject, as a JSON object) and back, so spans made after a restart join the same trace.
  restore() still reads what journals kept before: a bare traceparent, then tracestate after a newline.
- Log lines logged inside a span carry trace_id (common.logs asks current_trace_id()).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import grpc

__all__ = [
    "ENDPOINT_VARIABLES",
    "HELD_SPANS_MAX",
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
    "saga",
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

HELD_SPANS_MAX = 100_000
"""Span records a process holds at most for sagas whose traces are not sampled, until each one's end is known
(common.trace_keep; a record is a few hundred bytes: some 30 MB at worst)."""

OUTGOING_CACHED = 4096
"""Contexts whose outgoing headers are kept (about the sagas in flight in a shard, whose calls share one each)."""

RESTORED_CACHED = 4096
"""Contexts carrier() wrote that restore() answers without parsing them again (a new saga's, kept, then restored)."""

_state: dict[str, Any] = {}
"""The process's tracing once setup() turned it on: provider, recorder, interceptors. Empty: off."""

# The OpenTelemetry API's modules, bound by setup(): a process with tracing off never imports them, and the functions
# below, called on every saga and every call, do not pay an import statement's look-ups each time.
_context: Any = None
_propagate: Any = None
_trace: Any = None
_CODES = {code.name: code.value[0] for code in grpc.StatusCode}


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


def setup(
    service: str, instance: str = "", environ: Mapping[str, str] = os.environ, held_spans_max: int = HELD_SPANS_MAX
) -> bool:
    """Turns tracing on for this process if the environment asks for it; returns whether it is on. Call once, before
    any server or channel is built. The SDK flushes what it holds at exit (a SIGKILL loses at most the last batch).
    TracingConfigError if the environment names an OTLP protocol there is no exporter for."""
    if _state or not wanted(environ):
        return bool(_state)
    exporter = _exporter(protocol(environ))
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    global _context, _propagate, _trace
    from opentelemetry import context, propagate, trace
    from opentelemetry.instrumentation.grpc import aio_client_interceptors
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from common.trace_keep import Hold
    from common.trace_spans import HashedResource, Recorder

    _context, _propagate, _trace = context, propagate, trace
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    attributes = {} if named else {SERVICE_NAME: service}
    if instance:
        attributes["service.instance.id"] = instance
    created = Resource.create(attributes)  # the SDK's detectors and OTEL_RESOURCE_ATTRIBUTES, merged
    resource = HashedResource(created.attributes, created.schema_url)
    # Built without a sampler, the provider has the one the SDK reads from OTEL_TRACES_SAMPLER(_ARG).
    provider = TracerProvider(resource=resource)
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    # This project's own spans (server spans, a saga's) are common.trace_spans', handed to the same processor.
    recorder = Recorder(provider.id_generator, provider.sampler, processor, resource, "saga-coordinator")

    excluded = set(UNTRACED_SERVICES)
    excluded.update(s.strip() for s in environ.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", "").split(",") if s.strip())
    traced = _traced_filter(frozenset(excluded))
    _state.update(
        provider=provider,
        recorder=recorder,
        sampler=provider.sampler,
        hold=Hold(held_spans_max),
        untraced=frozenset(excluded),
        client=aio_client_interceptors(tracer_provider=provider, filter_=traced),  # type: ignore[no-untyped-call]
    )
    return True


def _traced_filter(excluded: frozenset[str]) -> Any:
    """The gRPC instrumentation's filter_: whether a call is traced, by its service's name. One split and one set
    look-up: the instrumentation's own filters.any_of(service_name(...)) ran isinstance checks against typing
    Protocols in each of its filters, on every call (about a tenth of the router's Python CPU with tracing on)."""

    def traced(details: Any) -> bool:
        method = details.method
        if isinstance(method, bytes):  # grpc.aio's client call details carry bytes (grpc issue 31092)
            method = method.decode()
        return str(method).lstrip("/").partition("/")[0] not in excluded

    return traced


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


def server_interceptors(joined: Collection[str] = ()) -> list[grpc.aio.ServerInterceptor]:
    """The server span interceptor (common.trace_server) when tracing is on (first in the chain, so refused calls
    are traced too); joined: methods ("/pkg.Service/Method") whose calls join their caller's span rather than make
    one of their own when the caller sent its context (a shard's saga-starting methods)."""
    if not _state:
        return []
    from common.trace_server import ServerSpans

    return [ServerSpans(_state["recorder"], _state["untraced"], frozenset(joined))]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's client interceptors when tracing is on: a span per call, its context in the call's metadata."""
    return list(_state.get("client", ()))


def carrier() -> str:
    """The current context as the journal keeps it: what the configured propagators inject ("" when off, or when
    they inject nothing: outside any span and without baggage)."""
    if not _state:
        return ""
    current = _context.get_current()
    return _remembered(_kept(_injected(current)), current)


def restore(kept: str) -> Any:
    """The context carrier() or remote_parent() kept, to parent spans on, as the configured propagators read it
    (None when off or nothing was kept)."""
    if not _state or not kept:
        return None
    cached = _state.get("restored", {}).get(kept)
    if cached is not None and cached[1] is _propagate.get_global_textmap():
        return cached[0]
    return _propagate.extract(_headers(kept))


def outgoing() -> tuple[tuple[str, str], ...]:
    """The current context as gRPC metadata, for a call made without the client interceptor; () when off or outside
    any span. The configured propagators write it: nothing here formats headers."""
    if not _state:
        return ()
    # A saga whose trace is not sampled makes each of its calls under one context object (its parent's): its headers
    # are written once. Contexts are immutable, so an object always injects the same headers for one propagator.
    current, textmap = _context.get_current(), _propagate.get_global_textmap()
    written: dict[int, tuple[Any, Any, tuple[tuple[str, str], ...]]] = _state.setdefault("outgoing", {})
    last = written.get(id(current))
    if last is not None and last[0] is current and last[1] is textmap:
        return last[2]
    headers = _lowered(textmap, current)
    if not _trace.get_current_span(current).is_recording():  # a recorded span's context serves one call only
        if len(written) >= OUTGOING_CACHED:
            written.clear()
        written[id(current)] = (current, textmap, headers)
    return headers


def _lowered(textmap: Any, context: Any) -> tuple[tuple[str, str], ...]:
    """What the propagators write for context, as gRPC metadata: gRPC refuses keys with capitals, and header names,
    all a propagator knows, are case-insensitive."""
    headers: dict[str, str] = {}
    textmap.inject(headers, context=context)
    return tuple([(key.lower(), value) for key, value in headers.items()])


def context_keys() -> frozenset[str]:
    """The metadata keys the configured propagators read and write (traceparent, tracestate, baggage by default): a
    hop that replaces its caller's context with its own drops these. Empty when off."""
    if not _state:
        return frozenset()
    # Asked on every call a router forwards: computed again only when the global propagator is replaced.
    textmap = _propagate.get_global_textmap()
    cached = _state.get("keys")
    if cached is None or cached[0] is not textmap:
        cached = _state["keys"] = (textmap, frozenset(key.lower() for key in textmap.fields))
    keys: frozenset[str] = cached[1]
    return keys


def remote_parent(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's context from a call's invocation metadata, as carrier() keeps it ("" if none came, or off): read
    and written again by the configured propagators, so a saga keeps whatever they carry (tracestate, baggage, B3).

    A saga's spans hang under the caller's span (the router's call), not under the shard's own server span: that one
    ends only with the PlaceOrder call, and is lost with the process if the shard is killed before."""
    if not _state or not metadata:
        return ""
    # As the gRPC instrumentation's server interceptor reads it (the last value of a key wins; binary ones are no
    # propagator's).
    context = _propagate.extract({key: value for key, value in metadata if isinstance(value, str)})
    if not _trace.get_current_span(context).get_span_context().is_valid:
        return ""  # no caller's span (baggage alone, say): the saga's spans join this call's own, which carries it
    return _remembered(_kept(_injected(context)), context)


def _remembered(kept: str, context: Any) -> str:
    """kept, with context remembered for restore() when the propagators read it (a caller's, as a saga started by a
    call keeps it): that saga's restore() then costs a look-up, not a parse and an extract."""
    if kept and _trace.get_current_span(context).get_span_context().is_remote:
        restored: dict[str, Any] = _state.setdefault("restored", {})
        if len(restored) >= RESTORED_CACHED:
            restored.clear()
        restored[kept] = (context, _propagate.get_global_textmap())
    return kept


def _injected(context: Any) -> dict[str, str]:
    """What the configured propagators write for context (None: the current one)."""
    headers: dict[str, str] = {}
    _propagate.inject(headers, context=context)
    return headers


_KEPT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
"""carrier()'s encoder, built once: json.dumps with arguments builds one on every call."""


def _kept(headers: Mapping[str, str]) -> str:
    return _KEPT_JSON.encode(headers) if headers else ""


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
    recorder = _state.get("recorder")
    if recorder is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    from common.trace_keep import current

    s = recorder.start(name, parent, SpanKind.CLIENT if client else SpanKind.INTERNAL, attributes)
    with current(s, parent if parent is not None else _context.get_current()):
        yield s


def saga(kept: str, fields: Mapping[str, Any], failing: str = "", summary: Mapping[str, Any] | None = None) -> Any:
    """One saga's spans in this process (common.trace_keep.SagaTrace), under the context kept (carrier()); None when
    off. fields go on every span, summary (what is the same for the whole saga and not needed to find its spans: its
    type, say) on its first span in this process and its state spans only (SagaTrace.moved). Whether its spans are
    made at once or held until the saga's end is known is the configured sampler's decision for the kept context;
    failing (the state of a saga loaded past its failure, e.g. "COMPENSATING"): kept from the start."""
    if not _state:
        return None
    from common.trace_keep import SagaTrace

    parent = restore(kept) or _context.Context()
    ctx = _trace.get_current_span(parent).get_span_context()
    # No kept trace (the saga began with tracing off): each span is a root, sampled as the SDK samples roots.
    sampled = not ctx.is_valid or _state["sampler"].should_sample(parent, ctx.trace_id, "saga").decision.is_sampled()
    return SagaTrace(_state["recorder"], _state["hold"], parent, fields, sampled, failing, summary)


def outcome(span: Any, code: str, ok: bool) -> None:
    """Marks span (from span(); None: nothing) with the attempt's gRPC status code (rpc.grpc.status_code), as an error
    whose message is the code's name unless ok."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", _CODES.get(code, 2))
    if not ok:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, code))


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" when off or outside any sampled span."""
    if not _state:
        return ""
    ctx = _trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def trace_id_of(kept: str) -> str:
    """The trace id of a kept context (32 hex digits; "" if it has none, or off): for a saga's log lines outside its
    spans, whatever propagator kept it."""
    context = restore(kept)
    if context is None:
        return ""
    ctx = _trace.get_current_span(context).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
