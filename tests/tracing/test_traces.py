"""Traces of real processes (router, shards, stubs started by the launcher) exported over OTLP to a real receiver in the
test: one saga is one tree from the client's span down to each service's, also across a SIGKILL of its shard; no span
carries payment data; log lines carry the trace id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.otlp import OtlpHttpReceiver, OtlpReceiver, Span
from common.tls import TlsFiles, aio_channel
from deploy.local import LaunchError
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.cluster import Cluster, ShardSettings
from tests.helpers.coordinator import place_request
from tests.helpers.stubs import StubControlClient, fault_rule

pytestmark = pytest.mark.timeout(180)

SECRET = "tok_ok_tracing_secret_7c1f"
"""The payment token: no byte the receiver is sent may contain it (span names, attributes, status, events, resource)."""
FAILING_SECRET = "tok_fail_tracing_secret_e94b2d"
"""The token of a saga whose payment fails: its failing path (error statuses, compensations) must not carry it."""
FORWARD = {
    "create_order": "/shop.v1.OrderService/CreateOrder",
    "reserve_inventory": "/shop.v1.InventoryService/ReserveInventory",
    "process_payment": "/shop.v1.PaymentService/ChargePayment",
    "schedule_shipment": "/shop.v1.ShippingService/ScheduleShipment",
}
COMPENSATE = {
    "create_order": "/shop.v1.OrderService/CancelOrder",
    "reserve_inventory": "/shop.v1.InventoryService/ReleaseInventory",
    "process_payment": "/shop.v1.PaymentService/RefundPayment",
    "schedule_shipment": "/shop.v1.ShippingService/CancelShipment",
}
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR
SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
async def cluster(tmp_path: Path, receiver: OtlpReceiver) -> AsyncIterator[Cluster]:
    settings = ShardSettings(forward_attempts=10_000, ttl_ms=120_000)
    c = Cluster(tmp_path, shards=2, settings=settings, env=receiver.environment())
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


class Client:
    """The test as an instrumented client: its own provider exporting to the receiver, OpenTelemetry's interceptors."""

    def __init__(self, receiver: OtlpReceiver, router: str) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)
        self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("test")
        interceptors = aio_client_interceptors(tracer_provider=self.provider)
        self.channel = aio_channel(router, TlsFiles(), interceptors=interceptors)
        self.saga = saga_pb2_grpc.SagaCoordinatorStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
        self.provider.shutdown()


def one_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id == trace_id]


def stub_span(spans: list[Span], method: str) -> list[Span]:
    return [s for s in spans if s.service == "saga-stubs" and s.name == method and s.kind == SERVER]


def chain(spans: list[Span], span: Span) -> list[Span]:
    """span, its parent, ... up to the first span whose parent was not exported."""
    by_id = {s.span_id: s for s in spans}
    out = [span]
    while out[-1].parent_id in by_id:
        out.append(by_id[out[-1].parent_id])
    return out


def assert_no_secret(receiver: OtlpReceiver | OtlpHttpReceiver, *secrets: str) -> None:
    """No span's strings hold a token, nor any byte of any export request (what decoding would not show too)."""
    secrets = secrets or (SECRET,)
    requests = receiver.requests
    assert requests and len(requests) == receiver.exports
    for secret in secrets:
        leaks = [(s.service, s.name) for s in receiver.spans if any(secret in text for text in s.strings())]
        assert not leaks, f"spans carry the payment token: {leaks}"
        raw = [i for i, body in enumerate(requests) if secret.encode() in body]
        assert not raw, f"export requests {raw} of {len(requests)} carry the payment token"


def trace_of(root: Any) -> str:
    return format(root.get_span_context().trace_id, "032x")


async def test_a_saga_is_one_tree_from_the_client_to_each_service(
    cluster: Cluster, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    client = Client(receiver, cluster.router.address)
    try:
        # Baggage of the caller's (W3C baggage: the default OTEL_PROPAGATORS of the client and the processes).
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with client.tracer.start_as_current_span("checkout") as root:
                reply = await client.saga.PlaceOrder(place_request("trace-ok-1", token=SECRET), timeout=60)
        finally:
            context.detach(token)
        assert reply.status == saga_pb2.SUCCESS, reply
    finally:
        await client.close()
    trace_id = format(root.get_span_context().trace_id, "032x")

    def complete(spans: list[Span]) -> bool:
        """Every service's span of every step arrived, and every span's parent (exports are batched per process)."""
        mine = one_trace(spans, trace_id)
        names = {s.name for s in mine}
        ids = {s.span_id for s in mine}
        arrived = all(stub_span(mine, m) for m in FORWARD.values()) and "forward schedule_shipment" in names
        return arrived and all(s.parent_id in ids for s in mine if s.parent_id)

    spans = one_trace(receiver.wait_for(complete, timeout_s=60), trace_id)
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [r.name for r in roots] == ["checkout"], roots
    orphans = [(s.service, s.name) for s in spans if s.parent_id and s.parent_id not in by_id]
    assert not orphans, f"spans whose parent never arrived: {orphans}"

    # client -> router -> shard: the router's span under the client's call, the shard's under the router's. The
    # shard's PlaceOrder makes no server span of its own: the router's call carried its context, and the saga's spans
    # hang under it (what a shard server span said, the router's span says).
    (client_call,) = [s for s in spans if s.service == "test-client" and s.kind == CLIENT]
    (router_in,) = [s for s in spans if s.service == "saga-router"]
    assert router_in.parent_id == client_call.span_id and router_in.name == "/saga.v1.SagaCoordinator/PlaceOrder"
    assert router_in.kind == SERVER
    assert not [s for s in spans if s.service == "saga-coordinator" and s.kind == SERVER]
    # A success makes no state span: the router's span ends with the saga and carries its status.
    assert not [s for s in spans if s.name.startswith("saga ")]
    # What is the same for the whole saga, and not needed to find its spans, is on its first span only.
    (first,) = [s for s in spans if s.name == "forward create_order"]
    assert first.attributes["saga.type"] == "order" and first.attributes["saga.shard"] == first.instance != ""

    # Each step: the attempt's span is the shard's call (under the router's call), the service's own span its child.
    for step, method in FORWARD.items():
        (service_span,) = stub_span(spans, method)
        attempt = by_id[service_span.parent_id]
        assert (attempt.service, attempt.kind, attempt.name) == ("saga-coordinator", CLIENT, f"forward {step}")
        assert attempt.parent_id == router_in.span_id
        service, _, name = method.rpartition("/")
        assert (attempt.attributes["rpc.service"], attempt.attributes["rpc.method"]) == (service.strip("/"), name)
        assert attempt.attributes["saga.order_id"] == "trace-ok-1"
        assert attempt.attributes["saga.step"] == step and attempt.attributes["saga.attempt"] == 1
        assert attempt.attributes["rpc.grpc.status_code"] == 0 and attempt.status_code != STATUS_ERROR
        # The action is the name's first word and the outcome the status code: neither is repeated (issue 32).
        assert "saga.action" not in attempt.attributes and "saga.outcome" not in attempt.attributes
        assert attempt.attributes["saga.id"] == reply.saga_id
        if attempt is not first:
            assert "saga.type" not in attempt.attributes and "saga.shard" not in attempt.attributes
        assert attempt.instance == first.instance
    assert_no_secret(receiver)

    # The saga's journal row keeps the router's context whole, the caller's baggage with it (spans after a restart
    # join the trace, and the services' calls carry the baggage).
    (node,) = [n for n in cluster.nodes if n.shard_id == first.instance]
    with contextlib.closing(sqlite3.connect(f"file:{node.journal}?mode=ro", uri=True)) as journal:
        (kept,) = journal.execute("SELECT trace_context FROM sagas WHERE order_id = ?", ("trace-ok-1",)).fetchone()
    headers = json.loads(kept)
    assert sorted(headers) == ["baggage", "traceparent"] and headers["baggage"] == "tenant=acme"
    assert headers["traceparent"].startswith(f"00-{trace_id}-{router_in.span_id}-")


async def test_a_failed_saga_traces_its_compensations(cluster: Cluster, receiver: OtlpReceiver, tmp_path: Path) -> None:
    """A declined payment: the failed forward's span has the failing outcome and an error status, each compensation
    its own span (the service's span its child), and the shard's log lines of the saga its trace id. A payment failing
    for good (the stub's fault rule, another token): no byte sent to the receiver holds either token."""
    client = Client(receiver, cluster.router.address)
    async with StubControlClient(cluster.stub_address) as control:
        rule = fault_rule("ChargePayment", order_id_prefix="trace-fail-", error_rate=1.0, error_code="INVALID_ARGUMENT")
        await control.set_faults([rule], seed=1)
        try:
            with client.tracer.start_as_current_span("checkout") as declined_root:
                declined = await client.saga.PlaceOrder(
                    place_request("trace-declined-1", token="tok_declined"), timeout=60
                )
            with client.tracer.start_as_current_span("checkout") as failing_root:
                failing = await client.saga.PlaceOrder(place_request("trace-fail-1", token=FAILING_SECRET), timeout=60)
        finally:
            await client.close()
    assert declined.status == saga_pb2.FAILED, declined
    assert failing.status == saga_pb2.FAILED, failing
    traces = {trace_of(declined_root): declined, trace_of(failing_root): failing}

    def compensated(spans: list[Span]) -> bool:
        """Both sagas ended, their services' spans of each compensation arrived, and every span's parent."""
        for trace_id in traces:
            mine = one_trace(spans, trace_id)
            ids = {s.span_id for s in mine}
            ended = any(s.name == "saga FAILED" for s in mine)
            undone = all(stub_span(mine, COMPENSATE[step]) for step in ("create_order", "reserve_inventory"))
            if not (ended and undone and all(s.parent_id in ids for s in mine if s.parent_id)):
                return False
        return True

    everything = receiver.wait_for(compensated, timeout_s=60)
    for trace_id, reply in traces.items():
        spans = one_trace(everything, trace_id)
        by_id = {s.span_id: s for s in spans}
        (router_in,) = [s for s in spans if s.service == "saga-router"]
        (payment,) = [s for s in spans if s.name == "forward process_payment"]
        code = "FAILED_PRECONDITION" if reply is declined else "INVALID_ARGUMENT"
        assert payment.status_code == STATUS_ERROR
        assert payment.status_message == code  # the code's name only: never the service's message
        assert payment.attributes["rpc.grpc.status_code"] == getattr(grpc.StatusCode, code).value[0]
        (charge,) = stub_span(spans, FORWARD["process_payment"])
        # The instrumentation marks a server span an error only for the server's own faults (INTERNAL, ...).
        assert charge.parent_id == payment.span_id
        assert charge.attributes["rpc.grpc.status_code"] == payment.attributes["rpc.grpc.status_code"]
        assert not [s for s in spans if s.name == "forward schedule_shipment"]

        compensations = sorted((s for s in spans if s.name.startswith("compensate ")), key=lambda s: s.start_ns)
        # Undone in reverse order; the payment that was refused has nothing to undo.
        assert [s.name for s in compensations] == ["compensate reserve_inventory", "compensate create_order"]
        for span in compensations:
            step = span.name.removeprefix("compensate ")
            assert (span.service, span.kind, span.parent_id) == ("saga-coordinator", CLIENT, router_in.span_id)
            assert span.attributes["saga.step"] == step and span.attributes["saga.attempt"] == 1
            assert span.attributes["rpc.grpc.status_code"] == 0
            assert span.attributes["saga.id"] == reply.saga_id and span.status_code != STATUS_ERROR
            service, _, name = COMPENSATE[step].rpartition("/")
            assert (span.attributes["rpc.service"], span.attributes["rpc.method"]) == (service.strip("/"), name)
            (service_span,) = stub_span(spans, COMPENSATE[step])
            assert by_id[service_span.parent_id] is span
        states = [s.name for s in sorted(spans, key=lambda s: s.start_ns) if s.name.startswith("saga ")]
        assert states == ["saga COMPENSATING", "saga FAILED"], states

        # A saga's log lines lead to its trace (a failed one logs at INFO).
        shard = payment.instance
        assert f"trace_id={trace_id}" in (tmp_path / f"{shard}.log").read_text()
    # The search can find what is there: the order ids are in the bytes, as plain strings.
    assert any(b"trace-fail-1" in body for body in receiver.requests)
    assert_no_secret(receiver, SECRET, FAILING_SECRET)


async def test_spans_after_a_shard_is_killed_join_the_same_trace(cluster: Cluster, receiver: OtlpReceiver) -> None:
    """Payment fails (UNAVAILABLE) until the shard holding the saga has been SIGKILLed mid-retries and restarted: the
    restarted shard's attempts hang under the same parent, in the same trace, and the saga finishes."""
    order = "trace-kill-1"
    async with StubControlClient(cluster.stub_address) as control:
        await control.set_faults([fault_rule("ChargePayment", order_id_prefix=order, error_rate=1.0)], seed=1)
        client = Client(receiver, cluster.router.address)
        try:
            with client.tracer.start_as_current_span("checkout") as root:
                request = place_request(order, token=SECRET, no_wait=True)
                await client.saga.PlaceOrder(request, timeout=60)
                placed = await client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id=order), timeout=10)
            trace_id = format(root.get_span_context().trace_id, "032x")

            def retrying(spans: list[Span]) -> bool:
                attempts = [s for s in one_trace(spans, trace_id) if s.name == "forward process_payment"]
                return len(attempts) >= 3

            receiver.wait_for(retrying, timeout_s=60)
            holder = next(i for i, n in enumerate(cluster.nodes) if n.shard_id == placed.shard_id)
            killed_at_ns = time.time_ns()
            await cluster.kill_shard(holder)
            dead_at_ns = time.time_ns()  # the process ran on until somewhere in between
            await control.clear_faults()
            await cluster.start_shard(holder)
            deadline = time.monotonic() + 90
            while True:
                saga = await client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id=order), timeout=10)
                if saga.state == saga_pb2.SAGA_STATE_SUCCEEDED:
                    break
                assert time.monotonic() < deadline, f"saga not finished after the restart: {saga}"
                await asyncio.sleep(0.2)
        finally:
            await client.close()

    def finished(spans: list[Span]) -> bool:
        mine = one_trace(spans, trace_id)
        return bool(stub_span(mine, FORWARD["schedule_shipment"])) and any(s.name == "saga SUCCEEDED" for s in mine)

    spans = one_trace(receiver.wait_for(finished, timeout_s=60), trace_id)
    attempts = [s for s in spans if s.name.startswith(("forward ", "compensate "))]
    before = [s for s in attempts if not s.attributes.get("saga.resumed")]
    after = [s for s in attempts if s.attributes.get("saga.resumed")]
    assert before and after, [(s.name, s.attributes) for s in attempts]
    assert all(s.start_ns >= killed_at_ns for s in after)
    # One parent for every attempt, before and after the kill: the router's span of the call that created the saga.
    assert len({s.parent_id for s in attempts}) == 1
    (router_in,) = [s for s in spans if s.span_id == attempts[0].parent_id]
    assert router_in.service == "saga-router" and router_in.kind == SERVER
    ok = [s for s in after if s.name == "forward process_payment" and s.attributes["rpc.grpc.status_code"] == 0]
    assert len(ok) == 1 and ok[0].attributes["saga.attempt"] > len([s for s in before if "payment" in s.name])
    # Everything after the restart reaches the client's root span; a span missing its parent is one whose parent
    # was open in the killed process (its call to a service in flight at the SIGKILL).
    for s in spans:
        top = chain(spans, s)[-1]
        if top.name != "checkout":
            assert s.start_ns < dead_at_ns and top.service == "saga-stubs", (s.name, s.start_ns - dead_at_ns, top.name)
    # A resumed saga's success has its state span (the router's span ended with the killed shard's call).
    (succeeded,) = [s for s in spans if s.name == "saga SUCCEEDED"]
    assert succeeded.attributes["saga.resumed"] and succeeded.parent_id == router_in.span_id
    # The restarted shard's first span of the saga (and only that one) carries what is the same for the whole saga.
    resumed = [s for s in spans if s.attributes.get("saga.resumed") and not s.name.startswith("saga ")]
    summarised = [s for s in resumed if "saga.type" in s.attributes]
    assert len(summarised) == 1 and summarised[0].attributes["saga.type"] == "order", summarised
    assert_no_secret(receiver)


async def test_no_span_is_made_when_no_endpoint_is_named(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """Off by default: with no OTEL_* endpoint nothing is exported, and incoming traceparents are merely passed on."""
    cluster = Cluster(tmp_path, shards=1)
    await cluster.start()
    try:
        client = Client(receiver, cluster.router.address)
        try:
            with client.tracer.start_as_current_span("checkout"):
                reply = await client.saga.PlaceOrder(place_request("trace-off-1"), timeout=60)
            assert reply.status == saga_pb2.SUCCESS
        finally:
            await client.close()
        await asyncio.sleep(1.0)
        assert {s.service for s in receiver.spans} == {"test-client"}
        shard_log = (tmp_path / "shard-1.log").read_text()
        assert "trace_id=" not in shard_log
    finally:
        await cluster.stop()


async def test_every_process_exports_over_otlp_http_protobuf(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf: router, shard and stubs post to a real OTLP/HTTP receiver, at
    the general endpoint with /v1/traces appended (the SDK's doing), one saga one tree."""
    with OtlpHttpReceiver() as receiver:
        cluster = Cluster(tmp_path, shards=1, env=receiver.environment())
        await cluster.start()
        try:
            async with aio_channel(cluster.router.address, TlsFiles()) as channel:
                saga = saga_pb2_grpc.SagaCoordinatorStub(channel)
                reply = await saga.PlaceOrder(place_request("trace-http-1", token=SECRET), timeout=60)
            assert reply.status == saga_pb2.SUCCESS, reply

            def complete(spans: list[Span]) -> bool:
                """Each process's spans arrived (each exports in batches of its own)."""
                names = {s.name for s in spans}
                services = {s.service for s in spans}
                arrived = all(stub_span(spans, m) for m in FORWARD.values()) and "forward schedule_shipment" in names
                return arrived and "saga-router" in services

            spans = receiver.wait_for(complete, timeout_s=60)
        finally:
            await cluster.stop()
    assert {s.service for s in spans} == {"saga-router", "saga-coordinator", "saga-stubs"}
    assert len({s.trace_id for s in spans}) == 1
    by_id = {s.span_id: s for s in spans}
    for step, method in FORWARD.items():
        (service_span,) = stub_span(spans, method)
        assert by_id[service_span.parent_id].name == f"forward {step}"
    assert set(receiver.paths) == {"/v1/traces"}
    assert_no_secret(receiver)


async def test_an_unsupported_otlp_protocol_stops_the_processes_at_start_up(tmp_path: Path) -> None:
    """http/json has no exporter here: a process asked for it does not start (rather than run exporting nothing), and
    says which variable holds what, and what it accepts."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    cluster = Cluster(tmp_path, shards=1, env=env)
    try:
        with pytest.raises(LaunchError) as refused:
            await cluster.start()
    finally:
        await cluster.stop()
    assert "exited with code 2" in refused.value.reason  # a configuration error, as the other bad settings
    assert "Traceback" not in str(refused.value)
    expected = "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported: traces are exported over "
    assert expected + '"grpc" or "http/protobuf"' in str(refused.value)


async def test_a_saga_started_without_a_callers_context_joins_the_shards_server_span(
    cluster: Cluster, receiver: OtlpReceiver
) -> None:
    """A shard's PlaceOrder makes a server span only when its caller sent no context (here: a client calling the shard
    directly, untraced): the saga's spans then hang under that span, one trace, rather than each being a root."""
    order = "trace-direct-1"
    for address in cluster.shard_addresses:
        async with aio_channel(address, TlsFiles()) as channel:
            saga = saga_pb2_grpc.SagaCoordinatorStub(channel)
            try:
                reply = await saga.PlaceOrder(place_request(order, token=SECRET), timeout=60)
            except grpc.aio.AioRpcError as e:  # not this shard's order (the ring): the other one owns it
                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                continue
        assert reply.status == saga_pb2.SUCCESS, reply
        break
    else:
        pytest.fail("no shard took the order")

    def finished(spans: list[Span]) -> bool:
        last = [
            s for s in spans if s.name == "forward schedule_shipment" and s.attributes.get("saga.order_id") == order
        ]
        trace = one_trace(spans, last[0].trace_id) if last else []
        return any(s.service == "saga-coordinator" and s.kind == SERVER for s in trace)  # it ends after the saga

    spans = receiver.wait_for(finished, timeout_s=60)
    (last,) = [s for s in spans if s.name == "forward schedule_shipment" and s.attributes["saga.order_id"] == order]
    trace = one_trace(spans, last.trace_id)
    (shard_in,) = [s for s in trace if s.service == "saga-coordinator" and s.kind == SERVER]
    assert shard_in.name == "/saga.v1.SagaCoordinator/PlaceOrder" and not shard_in.parent_id
    attempts = [s for s in trace if s.name.startswith("forward ")]
    assert len(attempts) == len(FORWARD) and {s.parent_id for s in attempts} == {shard_in.span_id}


async def test_a_saga_answered_before_its_end_still_ends_its_trace_with_its_state(
    cluster: Cluster, receiver: OtlpReceiver
) -> None:
    """A PlaceOrder with no_wait is answered at once: the router's span ends then, so it cannot say how the saga
    ended. The saga's own `saga SUCCEEDED` span does (only a saga that succeeds under the call waiting for it goes
    without one)."""
    order = "trace-nowait-1"
    async with aio_channel(cluster.router.address, TlsFiles()) as channel:
        saga = saga_pb2_grpc.SagaCoordinatorStub(channel)
        reply = await saga.PlaceOrder(place_request(order, token=SECRET, no_wait=True), timeout=60)
    assert reply.status == saga_pb2.PENDING, reply

    def finished(spans: list[Span]) -> bool:
        """The saga's state span and the router's span of its trace (each process exports in batches of its own)."""
        ends = [s for s in spans if s.name == "saga SUCCEEDED" and s.attributes.get("saga.order_id") == order]
        return bool(ends) and any(s.service == "saga-router" for s in one_trace(spans, ends[0].trace_id))

    spans = receiver.wait_for(finished, timeout_s=60)
    (succeeded,) = [s for s in spans if s.name == "saga SUCCEEDED" and s.attributes["saga.order_id"] == order]
    (router_in,) = [s for s in one_trace(spans, succeeded.trace_id) if s.service == "saga-router"]
    assert succeeded.parent_id == router_in.span_id and router_in.end_ns <= succeeded.start_ns
