"""Server spans (common.trace_server through common.tracing.server_interceptors): a joined method (a shard's
PlaceOrder) makes no span when its caller sent a context, whose context is then current in the handler (and what
carrier() keeps for the saga); without one it makes its own. net.peer.* only on the span of an untraced caller."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from bench.otlp import OtlpReceiver
from common import tracing

METHOD = "/saga.v1.SagaCoordinator/PlaceOrder"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        for key, value in r.environment().items():
            monkeypatch.setenv(key, value)
        assert tracing.setup("test-server")
        try:
            yield r
        finally:
            tracing.shutdown()


class Context:
    """The little of grpc.aio.ServicerContext a server span reads."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:51234"

    def code(self) -> None:
        return None


async def call(joined: bool, metadata: tuple[tuple[str, str], ...]) -> str:
    """One call through the interceptor; returns what carrier() kept inside the handler."""
    (interceptor,) = tracing.server_interceptors([METHOD] if joined else [])
    seen: list[str] = []

    async def handler(request: Any, context: Any) -> bytes:
        seen.append(tracing.carrier())
        return b""

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handler)

    details: Any = type("Details", (), {"method": METHOD, "invocation_metadata": metadata})()
    wrapped = await interceptor.intercept_service(continuation, details)
    assert wrapped.unary_unary is not None
    await wrapped.unary_unary(b"", Context(metadata))
    return seen[0]


async def test_a_joined_method_makes_no_span_under_a_traced_caller(receiver: OtlpReceiver) -> None:
    kept = await call(True, (("traceparent", TRACEPARENT),))
    assert json.loads(kept) == {"traceparent": TRACEPARENT}  # the caller's context, as the saga keeps it
    restored = tracing.restore(kept)
    assert tracing.trace_id_of(kept) == TRACEPARENT.split("-")[1] and restored is not None
    tracing.shutdown()
    assert receiver.spans == []


async def test_a_joined_method_makes_its_span_for_an_untraced_caller(receiver: OtlpReceiver) -> None:
    kept = await call(True, ())
    tracing.shutdown()
    (span,) = receiver.spans
    assert json.loads(kept)["traceparent"].split("-")[1:3] == [span.trace_id, span.span_id]
    assert span.attributes["net.peer.ip"] == "127.0.0.1" and span.attributes["net.peer.port"] == "51234"


async def test_other_methods_make_their_span_and_name_the_peer_only_when_untraced(receiver: OtlpReceiver) -> None:
    await call(False, (("traceparent", TRACEPARENT),))
    await call(False, ())
    tracing.shutdown()
    traced, untraced = sorted(receiver.spans, key=lambda s: not s.parent_id)
    assert traced.parent_id == TRACEPARENT.split("-")[2] and "net.peer.ip" not in traced.attributes
    assert not untraced.parent_id and untraced.attributes["net.peer.ip"] == "127.0.0.1"
    for span in (traced, untraced):
        assert span.name == METHOD and span.attributes["rpc.method"] == "PlaceOrder"


def test_a_callers_context_is_read_once_for_the_same_headers_and_again_for_others(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the W3C propagators, an unsampled saga's calls all carry its parent's traceparent and an untraced caller
    sends none: each is read once. Other values, or another global propagator, are read anew; headers no propagator
    reads are not the key. A propagator that is not W3C's may read headers it does not list: read every time."""
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from common import trace_server

    reads: list[dict[str, str]] = []
    original = TraceContextTextMapPropagator.extract

    def counting(self: Any, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        reads.append(dict(carrier))
        return original(self, carrier, context) if getter is None else original(self, carrier, context, getter)

    monkeypatch.setattr(TraceContextTextMapPropagator, "extract", counting)
    monkeypatch.setattr(trace_server, "_extracted", {})  # what earlier tests' calls left
    unsampled = TRACEPARENT[:-2] + "00"
    first = trace_server._parent(Context((("traceparent", unsampled), ("idempotency-key", "a"))))
    again = trace_server._parent(Context((("traceparent", unsampled), ("idempotency-key", "b"))))
    assert again is first and len(reads) == 1  # the same context, not read again
    span = trace.get_current_span(first).get_span_context()
    assert format(span.trace_id, "032x") == TRACEPARENT.split("-")[1] and not span.trace_flags.sampled
    other = trace_server._parent(Context((("traceparent", TRACEPARENT),)))
    assert other is not first and trace.get_current_span(other).get_span_context().trace_flags.sampled
    none = trace_server._parent(Context(()))
    assert trace_server._parent(Context((("user-agent", "x"),))) is none and len(reads) == 3
    assert not trace.get_current_span(none).get_span_context().is_valid
    # Another W3C composite is not answered from what the first one read.
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([TraceContextTextMapPropagator()]))
    assert trace_server._parent(Context((("traceparent", unsampled),))) is not first and len(reads) == 4

    class Reads(TraceContextTextMapPropagator):
        """Not W3C's own type: it might read a header outside its fields (as B3 reads x-b3-* under `b3`)."""

    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([Reads()]))
    for _ in range(2):
        trace_server._parent(Context((("traceparent", unsampled),)))
    assert len(reads) == 6
