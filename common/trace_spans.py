"""The spans this project's own code makes (server spans, a saga's spans): an implementation of the OpenTelemetry API's
Span that is also the SDK's ReadableSpan, as the SDK's own Span is, handed to the SDK's span processor when it ends.

Why not the SDK's own Span (Tracer.start_span): measured in a shard with every saga traced, an SDK span cost about
0.3 ms of CPU from start to export, five a saga; a quarter of it in a thread-safe live object (a lock, validated
bounded attributes, the span processors' on_start, the sampler's attribute copies) that code whose span ends with
a block never needs. This one is a plain object (the SDK's ReadableSpan, the type its span processors and exporters
take), changed only by the task that opened it and never after it ends. Everything else stays the SDK's: span and
trace ids (its IdGenerator), the sampling decision (the configured sampler, asked at the start as the SDK asks it),
batching (BatchSpanProcessor), encoding and export (its OTLP exporter), resource; and the context's headers are
written by the configured propagators.

Contract:

- Recorder.start(name, parent, kind, attributes) is a span under `parent`'s span (an OpenTelemetry Context; None:
  the current context's; a context without a valid span: a root in a new trace), sampled as the configured sampler
  decides for it (its attributes and trace state as the SDK takes them from the decision), or as the caller says
  (sampled=True: a saga whose trace was kept). Its span context carries the decision in its trace flags, with the
  W3C random-trace-id flag as the SDK sets it, so the headers the propagators write for it tell the next process.
- A span whose decision is not to record (a sampler's RECORD_ONLY included: nothing would export it) records nothing
  and costs its ids only; is_recording() is False, as the SDK's NonRecordingSpan. A sampled one records attributes,
  status, events and its name until end(); end() hands it to the span processor once (a second end() does nothing).
- The span processor is the one common.tracing.setup installs (a BatchSpanProcessor with the OTLP exporter, the
  provider's only one): end() calls its on_end; there is no on_start (a batch processor does nothing there).
- The SDK's span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, the event limits, ...)
  apply when one of them is set; otherwise a span's attributes are left as given (these spans carry about ten).
- Not thread-safe while open: a span is made, changed and ended by one task (the SDK's may be shared across threads;
  these never are). Once ended it no longer changes, and the batch processor's export thread only reads it.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Mapping
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import resources
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["HashedResource", "RecordedSpan", "Recorder"]

_UNSET = Status(StatusCode.UNSET)
_LIMIT_VARIABLES = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
)
"""The SDK's span limit variables: when one is set, this project's spans are bounded as the SDK bounds its own."""


class HashedResource(Resource):
    """The SDK's Resource, its hash computed once. The OTLP encoder files every span it encodes under its resource
    (a dict keyed by it), and Resource.__hash__ serialises the attributes to sorted JSON on each call: some 5 us a
    span, a tenth of encoding one. A resource is immutable (the SDK's own docstring), so its hash never changes;
    equality is Resource's, so spans of this and of an equal plain Resource still go out as one ResourceSpans."""

    def __init__(self, attributes: resources.Attributes, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class Recorder:
    """What a recorded span needs of the SDK: its ids, resource and scope, the sampler, the span processor, the span
    limits (None: none set, nothing to bound)."""

    __slots__ = ("ids", "limits", "processor", "random_ids", "resource", "sampler", "scope")

    def __init__(
        self,
        ids: IdGenerator,
        sampler: Sampler,
        processor: SpanProcessor,
        resource: Resource,
        scope: str,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.ids = ids
        self.random_ids = ids.is_trace_id_random()
        self.sampler = sampler
        self.processor = processor
        self.resource = resource
        self.scope = InstrumentationScope(scope)
        # SpanLimits() reads the variables itself; built only when one is set.
        self.limits = SpanLimits() if any(environ.get(v, "").strip() for v in _LIMIT_VARIABLES) else None

    def start(
        self,
        name: str,
        parent: otel_context.Context | None,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        sampled: bool | None = None,
        start_ns: int | None = None,
        owned: bool = False,
    ) -> RecordedSpan:
        """A span under parent, sampled as the configured sampler says (or as `sampled` says); start_ns: when it
        began, if before now (a held span made later); owned: attributes is a dict of the caller's own making, which
        the span may keep as its own (not copied)."""
        up = trace.get_current_span(parent).get_span_context()
        valid = up.is_valid
        trace_id = up.trace_id if valid else self.ids.generate_trace_id()
        trace_state = up.trace_state if valid else None
        recorded: dict[str, Any] | None = None
        if sampled is None:
            result = self.sampler.should_sample(parent, trace_id, name, kind, attributes)
            sampled, trace_state = result.decision.is_sampled(), result.trace_state  # type: ignore[no-untyped-call]
            if sampled:
                recorded = dict(result.attributes if result.attributes is not None else attributes)
        elif sampled:
            recorded = attributes if owned and type(attributes) is dict else dict(attributes)
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        # As the SDK sets it: the W3C random-trace-id flag from the parent, or the id generator's for a new trace.
        if up.trace_flags.random_trace_id if valid else self.random_ids:
            flags |= TraceFlags.RANDOM_TRACE_ID
        context = SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=trace_state,
        )
        return RecordedSpan(self, name, context, up if valid else None, kind, recorded, start_ns)


class RecordedSpan(trace.Span, ReadableSpan):
    """A span of this process (see the module's contract). Like the SDK's own Span, it is both the API's Span and the
    SDK's ReadableSpan: once ended it is handed to the span processor as it is, no copy made (its fields are
    ReadableSpan's, under ReadableSpan's names, and nothing changes them after end())."""

    # No __slots__: the API's Span has none, so they would save nothing.

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any] | None,
        start_ns: int | None,
    ) -> None:
        # ReadableSpan.__init__ is not called: it would build a default resource and set what is set here anyway.
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes  # None: not sampled, nothing is recorded
        self._events: list[Event] = []
        self._links = ()
        self._status = _UNSET
        self._start_time = start_ns or time.time_ns()
        self._end_time: int | None = None
        self._resource = recorder.resource
        self._instrumentation_scope = recorder.scope
        self._instrumentation_info = None

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)  # always set here; ReadableSpan's may be None

    def is_recording(self) -> bool:
        return self._attributes is not None and self._end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.is_recording():
            self._attributes[key] = value  # type: ignore[index]

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if self.is_recording():
            self._attributes.update(attributes)  # type: ignore[union-attr]

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self.is_recording():
            self._events.append(Event(name, attributes, timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        if self.is_recording():
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self.is_recording():
            return
        # As the SDK's span does: an OK status is final, and UNSET never replaces another.
        new = status if isinstance(status, Status) else Status(status, description)
        if self._status.status_code is StatusCode.OK or new.status_code is StatusCode.UNSET:
            return
        self._status = new

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """The SDK's exception event (type, message, stack trace), as its span records one."""
        if not self.is_recording():
            return
        stack = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        module, qualname = type(exception).__module__, type(exception).__qualname__
        event: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": stack,
            "exception.escaped": str(escaped),
        }
        self.add_event("exception", {**event, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        if self._attributes is None:
            return
        limits = self._recorder.limits
        if limits is not None:
            self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                self._attributes,
                immutable=True,
                max_value_len=limits.max_span_attribute_length,
            )
            events = self._events if limits.max_events is None else self._events[: limits.max_events]
            self._events = [
                Event(
                    e.name,
                    BoundedAttributes(
                        limits.max_event_attributes,
                        e.attributes,
                        immutable=True,
                        max_value_len=limits.max_attribute_length,
                    ),
                    e.timestamp,
                )
                for e in events
            ]
        self._recorder.processor.on_end(self)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        pass  # this project's spans carry no links
