"""A real OTLP trace receiver for tests and the bench: a gRPC server implementing the collector's TraceService (from
opentelemetry-proto) on 127.0.0.1, keeping every span it is sent.

    with OtlpReceiver() as receiver:
        env = receiver.environment()          # OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT, fast batches
        ...start processes with env...
        spans = receiver.wait_for(lambda spans: ..., timeout_s=30)

It runs on its own threads (grpc's sync server), so it keeps receiving while a test's event loop is busy or blocked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class Span:
    service: str
    """The exporting process's service.name."""
    instance: str
    """Its service.instance.id ("" if none)."""
    trace_id: str
    span_id: str
    parent_id: str
    """"" for a root span."""
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    status_code: int
    links: tuple[tuple[str, str], ...]
    """(trace id, span id) of each link."""

    def strings(self) -> Iterator[str]:
        """Every string this span carries (name, attribute values): what a secret must not be found in."""
        yield self.name
        yield self.service
        for key, value in self.attributes.items():
            yield key
            yield str(value)


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[Span] = []
        if not self._receiver.keep:
            count = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
            self._receiver._add(received, request.ByteSize(), count)
            return trace_service_pb2.ExportTraceServiceResponse()
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for scope in rs.scope_spans:
                for s in scope.spans:
                    received.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            instance=str(resource.get("service.instance.id", "")),
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={kv.key: _value(kv.value) for kv in s.attributes},
                            status_code=s.status.code,
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        )
                    )
        self._receiver._add(received, request.ByteSize(), len(received))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """keep=False: count spans and bytes only (the bench: decoding every span would load the machine it measures)."""

    def __init__(self, host: str = "127.0.0.1", keep: bool = True) -> None:
        self.keep = keep
        self.span_count = 0
        self._spans: list[Span] = []
        self._lock = threading.Condition()
        self.exports = 0
        self.bytes = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port(f"{host}:0")
        self.endpoint = f"http://{host}:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environment(self, batch_delay_ms: int | None = 100) -> dict[str, str]:
        """What a process needs to export here: the standard variables, with short batches so tests need not wait
        (None: the SDK's default delay, as in production)."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
        if batch_delay_ms is not None:
            env["OTEL_BSP_SCHEDULE_DELAY"] = str(batch_delay_ms)
        return env

    def _add(self, spans: list[Span], size: int, count: int) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.span_count += count
            self.exports += 1
            self.bytes += size
            self._lock.notify_all()

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, done: Callable[[list[Span]], bool], timeout_s: float) -> list[Span]:
        """The spans once done(spans) holds; AssertionError with what arrived if it does not within timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not done(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({f"{s.service}:{s.name}" for s in self._spans})
                    raise AssertionError(f"spans did not arrive within {timeout_s}s; got {len(self._spans)}: {names}")
                self._lock.wait(min(left, 0.5))
            return list(self._spans)
