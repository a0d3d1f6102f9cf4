"""connect(interceptors=...) against a real system with the router's auth policy: an interceptor of our own sees every
call (unary, paged, streamed) and adds a header the router acts on (a bearer token: with it a certificate without a
role may do what the token's role may), for SagaClient (grpc.aio interceptors) and SyncSagaClient (grpc ones); and
OpenTelemetry's aio interceptors, as a user would pass them, put the call's span context on the wire. SyncSagaClient
is traced by OpenTelemetry's GrpcInstrumentorClient instead: its span's context reaches a traced router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, aio_client_interceptors
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.otlp import OtlpReceiver, Span
from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from sagaclient import PaymentInfo, SagaClient, SyncSagaClient, Unauthenticated

from .conftest import start_system

PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR")
SAGA = "/saga.v1.SagaCoordinator/"
ADMIN = "/saga.v1.SagaAdmin/"


@dataclass
class Recorder:
    """What the interceptors saw: each call's method and metadata; `header` is added to every call."""

    header: tuple[str, str]
    methods: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

    def see(self, details: Any) -> tuple[tuple[str, str], ...]:
        method = details.method
        self.methods.append(method.decode() if isinstance(method, bytes) else method)  # grpc.aio passes bytes
        seen = tuple((str(k), str(v)) for k, v in details.metadata or ())
        self.metadata.append(dict(seen))
        return (*seen, self.header)


# grpc.aio files an interceptor under the first kind it subclasses, so each kind is its own object.
class AioUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*self.recorder.see(details))
        return await continuation(details._replace(metadata=metadata), request)


class AioStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def intercept_unary_stream(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        metadata = grpc.aio.Metadata(*self.recorder.see(details))
        return await continuation(details._replace(metadata=metadata), request)


class SyncInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def intercept_unary_unary(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=self.recorder.see(details)), request)

    def intercept_unary_stream(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=self.recorder.see(details)), request)


def _operator_header(system: LocalSystem) -> tuple[str, str]:
    assert system.policies is not None
    return ("authorization", f"Bearer {system.policies.token('ivy', ['client', 'operator'])}")


async def test_aio_interceptors_see_every_call_and_the_router_sees_their_header(tls_system: LocalSystem) -> None:
    roleless = tls_system.client_tls("launcher")  # a certificate no policy names: only a token gives it a role
    recorder = Recorder(_operator_header(tls_system))
    interceptors = [AioUnary(recorder), AioStream(recorder)]
    async with await SagaClient.connect(tls_system.router.address, tls=roleless, interceptors=interceptors) as client:
        parked = await client.place_order("dl-i-1", "u-1", [("unshippable-1", 1)], PAY)
        assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, parked
        letters = [d.order_id async for p in client.list_dead_letters(max_pages=1) for d in p.dead_letters]
        assert "dl-i-1" in letters  # an operator's call: the router read the interceptor's token
        updates = [u async for u in client.watch_saga("dl-i-1")]
        assert updates[-1].saga.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
    assert recorder.methods == [f"{SAGA}PlaceOrder", f"{ADMIN}ListDeadLetters", f"{SAGA}WatchSaga"]

    async with await SagaClient.connect(tls_system.router.address, tls=roleless) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.get_saga("dl-i-1")


def test_sync_interceptors_see_every_call_and_the_router_sees_their_header(tls_system: LocalSystem) -> None:
    roleless = tls_system.client_tls("launcher")
    recorder = Recorder(_operator_header(tls_system))
    address = tls_system.router.address
    with SyncSagaClient.connect(address, tls=roleless, interceptors=[SyncInterceptor(recorder)]) as client:
        parked = client.place_order("dl-i-2", "u-1", [("unshippable-1", 1)], PAY)
        assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, parked
        assert client.resolve_dead_letter("dl-i-2", "fixed by hand").state == saga_pb2.SAGA_STATE_RESOLVED
        assert list(client.watch_saga("dl-i-2"))[-1].saga.state == saga_pb2.SAGA_STATE_RESOLVED
    assert recorder.methods == [f"{SAGA}PlaceOrder", f"{ADMIN}ResolveDeadLetter", f"{SAGA}WatchSaga"]

    with SyncSagaClient.connect(address, tls=roleless) as anonymous, pytest.raises(Unauthenticated):
        anonymous.get_saga("dl-i-2")


def test_an_interceptor_of_the_other_api_is_refused(tls_system: LocalSystem) -> None:
    recorder = Recorder(_operator_header(tls_system))
    files = tls_system.client_tls("launcher")
    with pytest.raises(TypeError):
        SyncSagaClient.connect(tls_system.router.address, tls=files, interceptors=[AioUnary(recorder)])


async def test_opentelemetry_interceptors_send_the_calls_span_context(tls_system: LocalSystem) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    recorder = Recorder(_operator_header(tls_system))
    # OpenTelemetry's first, so ours (inside it) sees the metadata it adds, as the router would.
    interceptors = [*aio_client_interceptors(tracer_provider=provider), AioUnary(recorder)]
    files = tls_system.client_tls("launcher")
    async with await SagaClient.connect(tls_system.router.address, tls=files, interceptors=interceptors) as client:
        reply = await client.place_order("otel-i-1", "u-1", [("sku-1", 1)], PAY)
        assert reply.status == saga_pb2.SUCCESS, reply
    provider.shutdown()
    (span,) = spans.get_finished_spans()
    assert span.name == f"{SAGA}PlaceOrder" and span.context is not None
    traceparent = recorder.metadata[0]["traceparent"]
    assert traceparent.split("-")[1:3] == [f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"]


def test_grpc_instrumentor_traces_sync_client_calls_into_the_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    # GrpcInstrumentorClient traces with the global provider (0.66b2 reads tracer_provider from each channel call's
    # arguments, not from instrument()'s), which a process sets only once: the test lends it its own meanwhile.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    place_order = f"{SAGA}PlaceOrder"

    def routed(got: list[Span]) -> bool:
        return any(s.service == "saga-router" and s.name == place_order for s in got)

    with OtlpReceiver() as receiver:
        # The router exports its spans here: the server side of the call, with the parent it read from the metadata.
        system = start_system(tmp_path, process_env={"router": receiver.environment()})
        instrumentor = GrpcInstrumentorClient()
        try:
            instrumentor.instrument()
            recorder = Recorder(("x-test", "sync"))  # an interceptor of the user's own beside OpenTelemetry's
            with SyncSagaClient.connect(system.router.address, interceptors=[SyncInterceptor(recorder)]) as client:
                reply = client.place_order("otel-s-1", "u-1", [("sku-1", 1)], PAY)
                assert reply.status == saga_pb2.SUCCESS, reply
            received = receiver.wait_for(routed, timeout_s=30)
        finally:
            instrumentor.uninstrument()  # channels opened after this test are not wrapped
            system.stop()
    provider.shutdown()
    (call,) = [s for s in spans.get_finished_spans() if s.name == place_order]
    assert call.kind == trace.SpanKind.CLIENT and call.context is not None
    (router_in,) = [s for s in received if s.service == "saga-router" and s.name == place_order]
    assert router_in.kind == trace_pb2.Span.SPAN_KIND_SERVER
    # The client span's traceparent reached the router: its span is the client span's child, in the same trace.
    assert (router_in.trace_id, router_in.parent_id) == (
        f"{call.context.trace_id:032x}",
        f"{call.context.span_id:016x}",
    )
    assert recorder.methods == [place_order]
