"""common.tracing in this process: when the environment turns traces on and over which OTLP protocol, what it answers
while they are off, export through its own set-up to real receivers (OTLP/gRPC and OTLP/HTTP), and a saga's kept
context through the configured propagators (the traces of real processes are tested in tests/tracing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bench.otlp import OtlpHttpReceiver, OtlpReceiver
from common import tracing

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "console"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_traces_are_on_only_when_an_otlp_endpoint_is_named(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


@pytest.mark.parametrize(
    ("environ", "protocol"),
    [
        ({}, "grpc"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
        # The traces-specific variable wins over the general one, both ways.
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "grpc"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "http/protobuf",
        ),
        # Empty is unset (the general one then applies); values are case-insensitive.
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": " ", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": " HTTP/Protobuf "}, "http/protobuf"),
    ],
)
def test_the_protocol_is_chosen_as_the_specification_says(environ: dict[str, str], protocol: str) -> None:
    assert tracing.protocol(environ) == protocol


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        # A bad traces-specific value is not rescued by a good general one: it is the one the SDK would read.
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc-web", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_an_unsupported_protocol_is_refused_at_setup_naming_the_variable(
    environ: dict[str, str], variable: str
) -> None:
    value = next(iter(v for k, v in environ.items() if k == variable))
    expected = f'{variable}=\'{value}\' is not supported: traces are exported over "grpc" or "http/protobuf"'
    with pytest.raises(tracing.TracingConfigError) as refused:
        tracing.setup("test", environ={**ENDPOINT, **environ})
    assert str(refused.value) == expected
    assert not tracing.enabled()
    # Off, the protocol is never read: no endpoint named, nothing to refuse.
    assert tracing.setup("test", environ=environ) is False


def test_off_it_installs_nothing_and_reads_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.setup("test", environ={}) is False
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    assert tracing.carrier() == "" and tracing.restore(TRACEPARENT) is None
    assert tracing.remote_parent((("traceparent", "00-x"),)) == "" and tracing.current_trace_id() == ""
    assert tracing.outgoing() == () and tracing.context_keys() == frozenset()
    assert tracing.trace_id_of(TRACEPARENT) == ""
    with tracing.span("x", None, {"a": 1}) as span:
        assert span is None
    tracing.outcome(None, "OK", True)


@pytest.mark.parametrize("receiver_type", [OtlpReceiver, OtlpHttpReceiver], ids=["grpc", "http-protobuf"])
def test_spans_are_exported_over_the_protocol_the_environment_names(
    receiver_type: type[OtlpReceiver | OtlpHttpReceiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """setup() from the environment a receiver gives (OTEL_EXPORTER_OTLP_ENDPOINT, _TRACES_PROTOCOL); shutdown()
    flushes. Over http/protobuf the SDK appends /v1/traces to the general endpoint."""
    with receiver_type() as receiver:
        for key, value in receiver.environment().items():
            monkeypatch.setenv(key, value)
        try:
            assert tracing.setup("test-export", instance="i-1")
            with tracing.span("work", None, {"saga.step": "create_order"}, client=True) as span:
                tracing.outcome(span, "UNAVAILABLE", ok=False)
        finally:
            tracing.shutdown()
        (got,) = receiver.wait_for(lambda spans: bool(spans), timeout_s=10)
        if isinstance(receiver, OtlpHttpReceiver):
            assert receiver.paths == ["/v1/traces"]
    assert (got.service, got.instance, got.name) == ("test-export", "i-1", "work")
    assert got.attributes["saga.step"] == "create_order" and got.attributes["rpc.grpc.status_code"] == 14
    assert got.status_code == 2 and got.status_message == "UNAVAILABLE"  # STATUS_CODE_ERROR
    assert len(receiver.requests) == receiver.exports == 1


@pytest.mark.parametrize(("path", "arrives"), [("/v1/traces", True), ("/collector/traces", False)])
def test_http_protobuf_uses_the_traces_endpoint_as_given(
    path: str, arrives: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL (the SDK appends nothing): a path the receiver does not
    serve is posted to as is, and the spans are lost there."""
    with OtlpHttpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint + path)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        try:
            assert tracing.setup("test-http")
            with tracing.span("work", None, {}):
                pass
        finally:
            tracing.shutdown()
        assert receiver.paths == [path]
        assert [s.name for s in receiver.spans] == (["work"] if arrives else [])


class _PairPropagator(TextMapPropagator):
    """A propagator that is not W3C's, as B3's multi-header form is: a trace id and a span id in headers of its own
    (what a deployment's OTEL_PROPAGATORS=b3multi would carry; the b3 package is not a dependency)."""

    TRACE, SPAN = "x-test-traceid", "x-test-spanid"

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        trace_ids, span_ids = getter.get(carrier, self.TRACE), getter.get(carrier, self.SPAN)
        if not trace_ids or not span_ids:
            return context or Context()
        remote = SpanContext(int(trace_ids[0], 16), int(span_ids[0], 16), True, TraceFlags(TraceFlags.SAMPLED))
        return trace.set_span_in_context(NonRecordingSpan(remote), context)

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            setter.set(carrier, self.TRACE, format(span_context.trace_id, "032x"))
            setter.set(carrier, self.SPAN, format(span_context.span_id, "016x"))

    @property
    def fields(self) -> set[str]:
        return {self.TRACE, self.SPAN}


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """Tracing on in this process, exporting to a receiver; the configured propagators restored afterwards."""
    configured = propagate.get_global_textmap()
    with OtlpReceiver() as receiver:
        for key, value in receiver.environment().items():
            monkeypatch.setenv(key, value)
        assert tracing.setup("test-propagation")
        try:
            yield receiver
        finally:
            tracing.shutdown()
            propagate.set_global_textmap(configured)


def _in_trace(trace_id: str = TRACE_ID, span_id: str = SPAN_ID) -> Context:
    remote = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _ids(ctx: Any) -> tuple[str, str]:
    span_context = trace.get_current_span(ctx).get_span_context()
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def test_the_kept_context_keeps_baggage_through_the_journal(traced: OtlpReceiver) -> None:
    """OTEL_PROPAGATORS=tracecontext,baggage: a saga's baggage survives carrier() -> journal -> restore(), and goes
    out again on its calls (outgoing)."""
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    token = context.attach(baggage.set_baggage("tenant", "acme", _in_trace()))
    try:
        with tracing.span("checkout", None, {}) as span:
            kept = tracing.carrier()
            own = format(span.get_span_context().span_id, "016x")
    finally:
        context.detach(token)
    assert set(json.loads(kept)) == {"traceparent", "baggage"}
    restored = tracing.restore(kept)
    assert _ids(restored) == (TRACE_ID, own) and baggage.get_baggage("tenant", restored) == "acme"
    assert tracing.trace_id_of(kept) == TRACE_ID
    with tracing.span("forward create_order", restored, {}, client=True):
        sent = dict(tracing.outgoing())
    assert sent["baggage"] == "tenant=acme" and sent["traceparent"].split("-")[1] == TRACE_ID
    assert tracing.context_keys() == {"traceparent", "tracestate", "baggage"}


def test_the_callers_context_is_kept_whole_from_grpc_metadata(traced: OtlpReceiver) -> None:
    """remote_parent() reads what the configured propagators read (tracestate, baggage), nothing else of the call."""
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    metadata = (
        ("traceparent", TRACEPARENT),
        ("tracestate", "vendor=x"),
        ("baggage", "tenant=acme"),
        ("idempotency-key", "k-1"),
        ("trace-bin", b"\x00\x01"),
    )
    kept = tracing.remote_parent(metadata)
    assert json.loads(kept) == {"traceparent": TRACEPARENT, "tracestate": "vendor=x", "baggage": "tenant=acme"}
    restored = tracing.restore(kept)
    assert _ids(restored) == (TRACE_ID, SPAN_ID) and baggage.get_baggage("tenant", restored) == "acme"
    assert trace.get_current_span(restored).get_span_context().trace_state.get("vendor") == "x"
    # Baggage without a caller's span is no parent: the call's own span (carrier(), with the baggage) is.
    assert tracing.remote_parent((("baggage", "tenant=acme"),)) == ""


def test_a_remembered_context_restores_as_reading_it_again_would(traced: OtlpReceiver) -> None:
    """restore() answers a caller's context it saw kept (remote_parent(), carrier() under it) from memory: the same
    parent, tracestate and baggage as parsing the kept string; after the propagators change it reads it again."""
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    metadata = (("traceparent", TRACEPARENT), ("tracestate", "vendor=x"), ("baggage", "tenant=acme"))
    kept = tracing.remote_parent(metadata)
    remembered, parsed = tracing.restore(kept), propagate.extract(json.loads(kept))
    assert remembered is tracing.restore(kept)  # from memory, not parsed again
    for ctx in (remembered, parsed):
        span_context = trace.get_current_span(ctx).get_span_context()
        assert _ids(ctx) == (TRACE_ID, SPAN_ID) and span_context.is_remote and span_context.trace_flags.sampled
        assert span_context.trace_state.get("vendor") == "x" and baggage.get_baggage("tenant", ctx) == "acme"
    token = context.attach(remembered)
    try:
        assert tracing.carrier() == kept
    finally:
        context.detach(token)
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    again = tracing.restore(kept)
    assert again is not remembered and _ids(again) == (TRACE_ID, SPAN_ID)
    assert baggage.get_baggage("tenant", again) is None  # the baggage propagator is no longer configured


def test_a_propagator_that_is_not_w3c_survives_the_round_trip(traced: OtlpReceiver) -> None:
    """Whatever headers OTEL_PROPAGATORS' propagators use are what the journal keeps, and what a router replaces."""
    propagate.set_global_textmap(_PairPropagator())
    metadata = (
        ("x-test-traceid", TRACE_ID),
        ("x-test-spanid", SPAN_ID),
        ("traceparent", f"00-{'9' * 32}-{'8' * 16}-01"),  # no configured propagator reads it
    )
    kept = tracing.remote_parent(metadata)
    assert json.loads(kept) == {"x-test-traceid": TRACE_ID, "x-test-spanid": SPAN_ID}
    restored = tracing.restore(kept)
    assert _ids(restored) == (TRACE_ID, SPAN_ID) and tracing.trace_id_of(kept) == TRACE_ID
    with tracing.span("forward create_order", restored, {}, client=True) as span:
        assert dict(tracing.outgoing()) == {
            "x-test-traceid": TRACE_ID,
            "x-test-spanid": format(span.get_span_context().span_id, "016x"),
        }
        assert _ids(tracing.restore(tracing.carrier()))[0] == TRACE_ID
    assert tracing.context_keys() == {"x-test-traceid", "x-test-spanid"}


def test_a_context_kept_by_an_earlier_version_still_restores(traced: OtlpReceiver) -> None:
    """Journal rows written before the whole carrier was kept hold a bare traceparent, then tracestate after a
    newline; values that do not parse restore to no parent (the saga's spans start a trace) rather than fail."""
    restored = tracing.restore(TRACEPARENT)
    assert _ids(restored) == (TRACE_ID, SPAN_ID) and tracing.trace_id_of(TRACEPARENT) == TRACE_ID
    with_state = tracing.restore(f"{TRACEPARENT}\nvendor=x")
    assert _ids(with_state) == (TRACE_ID, SPAN_ID)
    assert trace.get_current_span(with_state).get_span_context().trace_state.get("vendor") == "x"
    assert tracing.trace_id_of(f"{TRACEPARENT}\nvendor=x") == TRACE_ID
    for garbage in ("garbage", "{not json", "[1, 2]", '{"traceparent": 7}'):
        assert not trace.get_current_span(tracing.restore(garbage)).get_span_context().is_valid
        assert tracing.trace_id_of(garbage) == ""
    assert tracing.restore("") is None and tracing.trace_id_of("") == ""


class _IncomingCall:
    """What the router's IncomingCall reads of the call it handles (grpc.aio.ServicerContext's two methods)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None


def test_a_router_replaces_all_of_its_callers_context_with_its_own(traced: OtlpReceiver) -> None:
    """The router's calls to the shards carry its own span's context: every header of the configured propagators is
    the router's (the caller's baggage once, as the router's context holds it), the rest of the metadata passes."""
    from shard_router.relay.forwarding import IncomingCall  # the one hop that replaces a caller's context

    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    incoming = (("traceparent", TRACEPARENT), ("tracestate", "vendor=x"), ("baggage", "tenant=acme"), ("x-a", "1"))
    # As the router's server interceptor leaves it: the caller's context made current, the router's span in it.
    token = context.attach(propagate.extract(dict(incoming)))
    try:
        with tracing.span("/saga.v1.SagaCoordinator/PlaceOrder", None, {}) as span:
            metadata = IncomingCall.from_context(_IncomingCall(incoming)).metadata
            router = format(span.get_span_context().span_id, "016x")
    finally:
        context.detach(token)
    keys = [key for key, _ in metadata]
    assert sorted(keys) == ["baggage", "traceparent", "tracestate", "x-a"], metadata
    sent = dict(metadata)
    assert sent["traceparent"] == f"00-{TRACE_ID}-{router}-01" and sent["baggage"] == "tenant=acme"
