"""Which of a saga's spans are exported: the sampler's choice, and every saga that goes wrong whatever it chose.

Contract:

- The process's sampler is the SDK's own, read from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG; common.tracing
  asks it once a saga, for the saga's kept context. Nothing here batches or exports: the SDK does, through its
  BatchSpanProcessor (spans are common.trace_spans', handed to it finished).
- SagaTrace is one saga's spans in one process. A saga whose trace the sampler keeps makes its spans at once, as
  any traced code does. A saga it does not keep makes no span at all: each span is held as a small record (name,
  kind, times, attributes, status) until the saga's end is known. keep() (the saga compensates, fails, is
  dead-lettered) makes the held spans then, sampled whatever the sampler said, with their own times and marked KEPT
  (the reason: the saga's state), and every later span too; drop() (it succeeded) forgets them.
- What is held is bounded per process (Hold: common.tracing.HELD_SPANS_MAX records): past it, the saga holding the
  oldest records loses all of them, and makes no span afterwards either, so a trace is exported or dropped whole.
- Held or not, a saga's span is current in the block (its context, or its parent's while held, goes on in the
  calls' metadata): the services see the trace's own sampled flag, and decide by it.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.trace_spans import Recorder

__all__ = ["KEPT", "Hold", "SagaTrace"]

KEPT = "saga.kept"
"""The attribute on the spans of a saga exported because it went wrong; its value is why (its state: FAILED, ...)."""


class Hold:
    """The span records a process holds for sagas not yet known to be kept, oldest saga first; bounded."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self.spans = 0
        """Records held now."""
        self.dropped_sagas = 0
        """Sagas whose held records were dropped for room (their traces are not exported)."""
        self._sagas: OrderedDict[SagaTrace, None] = OrderedDict()

    def add(self, saga: SagaTrace) -> None:
        if saga not in self._sagas:
            self._sagas[saga] = None
        self.spans += 1
        while self.spans > self.max_spans and self._sagas:
            oldest, _ = self._sagas.popitem(last=False)
            self.spans -= len(oldest.held)
            oldest.overflowed()
            self.dropped_sagas += 1

    def release(self, saga: SagaTrace) -> None:
        """The saga is kept or dropped: its records leave the count (called before they are cleared)."""
        if saga in self._sagas:
            del self._sagas[saga]
            self.spans -= len(saga.held)

    def __len__(self) -> int:
        return len(self._sagas)


class _HeldSpan:
    """What a held span's block may set on it (the engine's outcome: an attribute, an error status)."""

    __slots__ = ("attributes", "end_ns", "kind", "name", "start_ns", "status")

    def __init__(self, name: str, kind: SpanKind, attributes: dict[str, Any]) -> None:
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.status: Status | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def set_status(self, status: Status) -> None:
        self.status = status

    def is_recording(self) -> bool:
        return False


_HOLDING, _EXPORTING, _DROPPED = "holding", "exporting", "dropped"


class SagaTrace:
    """One saga's spans in this process (see the module's contract). fields go on every span, summary on its first
    span in this process and on its state spans (moved())."""

    __slots__ = (
        "_hold",
        "_mode",
        "_recorder",
        "_sampled",
        "_unsummarized",
        "closes_caller",
        "fields",
        "held",
        "parent",
        "reason",
        "summary",
    )

    def __init__(
        self,
        recorder: Recorder,
        hold: Hold,
        parent: otel_context.Context,
        fields: Mapping[str, Any],
        sampled: bool,
        kept: str = "",
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        self._recorder = recorder
        self._hold = hold
        self.parent = parent
        # A kept trace's decision is made once, for the saga (sampled); without one (the saga began with tracing off)
        # each span is a root of its own trace, sampled as the sampler samples roots (None: ask it).
        self._sampled: bool | None = True if trace.get_current_span(parent).get_span_context().is_valid else None
        self.fields = dict(fields)
        self.summary = dict(summary or {})
        self._unsummarized = bool(self.summary)
        self.closes_caller = False
        """The call that created the saga waits for its end, so its caller's span ends with it (set by the shard; a
        saga resumed, answered early or started without waiting: False). A success then makes no state span."""
        self.held: list[_HeldSpan] = []
        self.reason = ""
        self._mode = _EXPORTING if sampled else _HOLDING
        if kept:
            self.keep(kept)

    @property
    def trace_id(self) -> str:
        """The trace's id (32 hex digits), "" if the saga's spans are roots (no trace was kept)."""
        ctx = trace.get_current_span(self.parent).get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else ""

    @property
    def holding(self) -> bool:
        return self._mode is _HOLDING

    @property
    def exporting(self) -> bool:
        return self._mode is _EXPORTING

    def keep(self, reason: str) -> None:
        """The saga went wrong: every span of it is exported, those held so far (with their own times) included."""
        if self._mode is _DROPPED or self.reason:
            return
        if self._mode is _HOLDING:
            self._hold.release(self)
            held, self.held = self.held, []
            self._mode = _EXPORTING
            self.reason = reason
            for h in held:
                attributes = {**h.attributes, KEPT: reason}
                span = self._recorder.start(h.name, self.parent, h.kind, attributes, True, h.start_ns)
                if h.status is not None:
                    span.set_status(h.status)
                span.end(h.end_ns or None)
        # A saga whose trace was sampled anyway is exported as it is: no mark, no change.

    def drop(self) -> None:
        """The saga succeeded: what is held is forgotten, and what follows is not recorded."""
        if self._mode is _HOLDING:
            self._hold.release(self)
            self.held = []
            self._mode = _DROPPED

    def overflowed(self) -> None:
        """Hold made room: the saga's records are gone, so it exports nothing more (no partial tree)."""
        self.held = []
        self._mode = _DROPPED

    def moved(self, state: str) -> None:
        """The saga's state span, `saga <state>` (no duration), with saga.state and the summary fields. A success
        makes none when the caller's span ends with the saga (closes_caller: a PlaceOrder that waited for it, and
        it never went wrong): that span carries the outcome, and each span costs every saga its export."""
        if self._mode is _DROPPED:
            return  # nothing to make (a succeeded saga that was not sampled), not even a record
        if state == "SUCCEEDED" and self.closes_caller and not self.reason:
            return
        with self.span(f"saga {state}", {**self.summary, "saga.state": state}):
            pass

    def span(self, name: str, attributes: Mapping[str, Any], client: bool = False) -> _SagaSpan:
        """A span of the saga, current in the block with the rest of the saga's parent context (its baggage).
        Yields the span (or a held record with the same set_attribute/set_status); an exception leaving the block
        is recorded as the span's error status."""
        return _SagaSpan(self, name, attributes, SpanKind.CLIENT if client else SpanKind.INTERNAL)


class _SagaSpan:
    """SagaTrace.span's block. A class, not a generator-based context manager: a saga's attempts each open one, and
    a generator, its context manager object and their frames cost more than the span they wrap (issue 32)."""

    __slots__ = ("_attributes", "_kind", "_name", "_saga", "_span", "_token")

    def __init__(self, saga: SagaTrace, name: str, attributes: Mapping[str, Any], kind: SpanKind) -> None:
        self._saga = saga
        self._name = name
        self._attributes = attributes
        self._kind = kind
        self._span: Any = None
        self._token: Any = None

    def __enter__(self) -> Any:
        saga = self._saga
        if saga._mode is _DROPPED:
            self._token = otel_context.attach(saga.parent)  # the calls carry the trace, unsampled
            self._span = trace.INVALID_SPAN
            return self._span
        fields = {**saga.fields, **self._attributes}
        if saga._unsummarized:
            fields.update(saga.summary)
            saga._unsummarized = False
        if saga._mode is _HOLDING:
            # No span: a record. The parent's context is current, so the calls carry the trace unsampled.
            held = _HeldSpan(self._name, self._kind, fields)
            saga.held.append(held)
            saga._hold.add(saga)
            self._token = otel_context.attach(saga.parent)
            self._span = held
            return held
        if saga.reason:
            fields[KEPT] = saga.reason
        span = saga._recorder.start(
            self._name, saga.parent, self._kind, fields, True if saga.reason else saga._sampled, owned=True
        )
        self._token = otel_context.attach(trace.set_span_in_context(span, saga.parent))
        self._span = span
        return span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._token)
        span = self._span
        if isinstance(span, _HeldSpan):
            if error is not None:
                span.status = Status(StatusCode.ERROR, type(error).__name__)
            span.end_ns = time.time_ns()
        elif span is not trace.INVALID_SPAN:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()


@contextlib.contextmanager
def current(span: Any, parent: otel_context.Context) -> Iterator[None]:
    """span current for the block together with the rest of parent (its baggage stays current too: given only as
    the span's parent, nothing else of parent would be current), ended after it; an exception leaving the block is
    recorded on it as its error status."""
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    try:
        yield
    except BaseException as e:
        span.record_exception(e)
        span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()
