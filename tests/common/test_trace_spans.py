"""common.trace_spans: this project's spans, handed to the SDK finished. Each is checked against what the SDK's own
span would hand its processors (the SDK's in-memory exporter behind its simple processor: real SDK parts)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from common.trace_spans import Recorder


def recorder(sampler: Sampler = ALWAYS_ON) -> tuple[Recorder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "test"}), sampler=sampler)
    return Recorder(provider.id_generator, sampler, SimpleSpanProcessor(exporter), provider.resource, "t"), exporter


def remote(sampled: bool) -> context.Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def test_a_sampled_span_reaches_the_processor_once_as_the_sdk_would_hand_it() -> None:
    r, exported = recorder()
    span = r.start("forward create_order", remote(True), SpanKind.CLIENT, {"saga.id": "s"})
    assert span.is_recording() and span.get_span_context().trace_flags.sampled
    span.set_attributes({"saga.outcome": "OK", "rpc.grpc.status_code": 0})
    span.end()
    span.end()  # a second end does nothing
    span.set_attribute("late", 1)  # nor does anything after the end
    (got,) = exported.get_finished_spans()
    assert got.name == "forward create_order" and got.kind is SpanKind.CLIENT
    assert dict(got.attributes or {}) == {"saga.id": "s", "saga.outcome": "OK", "rpc.grpc.status_code": 0}
    assert got.context is not None and got.parent is not None
    assert got.context.trace_id == 0x1234 and got.parent.span_id == 0x5678 and got.parent.is_remote
    assert got.resource.attributes["service.name"] == "test" and got.instrumentation_scope.name == "t"
    assert got.start_time is not None and got.end_time is not None and got.start_time <= got.end_time


def test_the_sampler_decides_and_an_unsampled_span_records_nothing() -> None:
    r, exported = recorder(ParentBased(ALWAYS_ON))
    span = r.start("x", remote(False), SpanKind.INTERNAL, {"a": 1})
    assert not span.is_recording() and not span.get_span_context().trace_flags.sampled
    assert span.get_span_context().trace_id == 0x1234  # same trace, a span id of its own
    span.set_attribute("b", 2)
    span.end()
    assert exported.get_finished_spans() == ()
    # The caller's decision wins over the sampler's (a saga kept because it failed).
    r, exported = recorder(ALWAYS_OFF)
    r.start("kept", remote(False), SpanKind.INTERNAL, {}, sampled=True).end()
    assert [s.name for s in exported.get_finished_spans()] == ["kept"]


def test_a_root_starts_a_trace_of_its_own() -> None:
    r, exported = recorder()
    a, b = (r.start(n, None, SpanKind.SERVER, {}) for n in "ab")
    assert a.get_span_context().trace_id != b.get_span_context().trace_id
    a.end()
    (got,) = exported.get_finished_spans()
    assert got.parent is None


def test_status_and_exceptions_as_the_sdk_records_them() -> None:
    r, exported = recorder()
    span = r.start("x", None, SpanKind.INTERNAL, {})
    span.set_status(Status(StatusCode.ERROR, "UNAVAILABLE"))
    span.set_status(StatusCode.UNSET)  # UNSET never replaces another status
    try:
        raise ValueError("boom")
    except ValueError as e:
        span.record_exception(e)
    span.end(end_time=span.start_time + 5)
    (got,) = exported.get_finished_spans()
    assert got.status.status_code is StatusCode.ERROR and got.status.description == "UNAVAILABLE"
    (event,) = got.events
    assert event.name == "exception" and (event.attributes or {})["exception.type"] == "ValueError"
    assert "boom" in str((event.attributes or {})["exception.stacktrace"])
    assert got.end_time == got.start_time + 5  # type: ignore[operator]
    ok = r.start("y", None, SpanKind.INTERNAL, {})
    ok.set_status(StatusCode.OK)
    ok.set_status(Status(StatusCode.ERROR, "later"))  # OK is final
    ok.end()
    assert exported.get_finished_spans()[1].status.status_code is StatusCode.OK


def test_the_random_trace_id_flag_is_set_as_the_sdk_sets_it() -> None:
    """W3C level 2: a new trace from the SDK's random id generator says so (flag 0x02); a child copies its parent's."""
    r, _ = recorder()
    root = r.start("root", context.Context(), SpanKind.SERVER, {})
    assert root.get_span_context().trace_flags == TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID
    child = r.start("child", trace.set_span_in_context(root), SpanKind.CLIENT, {})
    assert child.get_span_context().trace_flags.random_trace_id
    assert not r.start("x", remote(True), SpanKind.CLIENT, {}).get_span_context().trace_flags.random_trace_id


def test_a_non_builtin_exception_is_named_with_its_module_as_the_sdk_names_it() -> None:
    r, exported = recorder()
    span = r.start("x", None, SpanKind.INTERNAL, {})
    span.record_exception(asyncio.CancelledError())
    span.end()
    (event,) = exported.get_finished_spans()[0].events
    assert (event.attributes or {})["exception.type"] == "asyncio.exceptions.CancelledError"


def test_the_sdks_span_limits_apply_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    r, exported = recorder()
    span = r.start("x", None, SpanKind.INTERNAL, {"b": 1, "c": 2, "a": "0123456789"})
    span.add_event("e", {"long": "abcdefgh"})
    span.end()
    (got,) = exported.get_finished_spans()
    # As the SDK bounds its own: the oldest attribute makes room, long values are cut.
    assert dict(got.attributes or {}) == {"c": 2, "a": "01234"} and got.dropped_attributes == 1
    assert dict(got.events[0].attributes or {}) == {"long": "abcde"}


def test_the_attributes_the_sampler_decides_on_are_the_spans() -> None:
    class Adding(Sampler):
        def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, {"given": 1, "sampler.added": True})

        def get_description(self) -> str:
            return "Adding"

    r, exported = recorder(Adding())
    r.start("x", None, SpanKind.INTERNAL, {"given": 1}).end()
    assert dict(exported.get_finished_spans()[0].attributes or {}) == {"given": 1, "sampler.added": True}


def test_a_hashed_resource_is_the_sdks_resource_with_its_hash_kept() -> None:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from common.trace_spans import HashedResource

    plain = Resource.create({"service.name": "test", "service.instance.id": "shard-1"})
    hashed = HashedResource(plain.attributes, plain.schema_url)
    assert hashed == plain and plain == hashed and hash(hashed) == hash(plain)
    assert dict(hashed.attributes) == dict(plain.attributes) and hashed.schema_url == plain.schema_url
    assert hash(hashed) != hash(HashedResource({**plain.attributes, "service.instance.id": "shard-2"}))
    with pytest.raises(TypeError):  # immutable, as the SDK's: the kept hash cannot go stale
        hashed.attributes["service.name"] = "other"  # type: ignore[index]
    # Spans of both go out as one ResourceSpans, as spans of one resource do.
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=hashed)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Recorder(provider.id_generator, ALWAYS_ON, SimpleSpanProcessor(exporter), plain, "t").start(
        "a", None, SpanKind.INTERNAL, {}
    ).end()
    provider.get_tracer("t").start_span("b").end()
    (resource_spans,) = encode_spans(exporter.get_finished_spans()).resource_spans
    assert sorted(s.name for scope in resource_spans.scope_spans for s in scope.spans) == ["a", "b"]


def test_a_recorded_span_sets_every_field_the_sdks_readable_span_has() -> None:
    """RecordedSpan skips ReadableSpan.__init__ (it sets the same fields itself): should the SDK add a field, this
    fails rather than an exporter reading a missing attribute."""
    from opentelemetry.sdk.trace import ReadableSpan

    r, _ = recorder()
    span = r.start("x", None, SpanKind.INTERNAL, {})
    assert set(vars(ReadableSpan(name="x"))) <= set(vars(span))
