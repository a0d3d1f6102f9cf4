"""Real OTLP trace receivers for tests and the bench, on 127.0.0.1, keeping every span they are sent and the bytes of
every request (what a secret must not be found in: span names, attributes, status messages, events, resources):

- OtlpReceiver: OTLP/gRPC, the collector's TraceService (from opentelemetry-proto).
- OtlpHttpReceiver: OTLP/HTTP with protobuf bodies, POST /v1/traces (the path the SDK appends to
  OTEL_EXPORTER_OTLP_ENDPOINT); any other path is 404, so an exporter posting elsewhere exports nothing.

    with OtlpReceiver() as receiver:
        env = receiver.environment()          # OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT, fast batches
        ...start processes with env...
        spans = receiver.wait_for(lambda spans: ..., timeout_s=30)

Each runs on its own threads (grpc's sync server, http.server's), so it keeps receiving while a test's event loop is
busy or blocked.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Self

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

TRACES_PATH = "/v1/traces"
_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


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
    status_message: str = ""

    def strings(self) -> Iterator[str]:
        """Every string this span carries (name, attribute values): what a secret must not be found in."""
        yield self.name
        yield self.service
        yield self.status_message
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


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    received: list[Span] = []
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
                        status_message=s.status.message,
                    )
                )
    return received


class _Receiver:
    """What both transports keep. keep=False: count spans and bytes only (the bench: keeping every span and request
    would load the machine it measures)."""

    protocol = ""
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL for the processes exporting here."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.span_count = 0
        self.exports = 0
        self.bytes = 0
        self.endpoint = ""
        self._spans: list[Span] = []
        self._requests: list[bytes] = []
        self._lock = threading.Condition()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def environment(self, batch_delay_ms: int | None = 100) -> dict[str, str]:
        """What a process needs to export here: the standard variables, with short batches so tests need not wait
        (None: the SDK's default delay, as in production)."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            # The most specific variable, so that a protocol set in the environment running the tests cannot win.
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": self.protocol,
        }
        if batch_delay_ms is not None:
            env["OTEL_BSP_SCHEDULE_DELAY"] = str(batch_delay_ms)
        return env

    def _receive(self, body: bytes) -> None:
        """One export request's bytes (decompressed), as the exporter sent them. DecodeError if they do not parse."""
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        spans = _spans(request) if self.keep else []
        count = len(spans) if self.keep else sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        with self._lock:
            self._spans.extend(spans)
            if self.keep:
                self._requests.append(body)
            self.span_count += count
            self.exports += 1
            self.bytes += len(body)
            self._lock.notify_all()

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    @property
    def requests(self) -> list[bytes]:
        """Every export request received, as bytes (keep=True only)."""
        with self._lock:
            return list(self._requests)

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


class OtlpReceiver(_Receiver):
    """OTLP/gRPC. Its Export handler takes the request's bytes undecoded (no deserializer), so `requests` are exactly
    what arrived (after gRPC's own decompression)."""

    protocol = "grpc"

    def __init__(self, host: str = "127.0.0.1", keep: bool = True) -> None:
        super().__init__(keep)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        export = grpc.unary_unary_rpc_method_handler(
            self._export, response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString
        )
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, {"Export": export}),))
        self.port = self._server.add_insecure_port(f"{host}:0")
        self.endpoint = f"http://{host}:{self.port}"

    def _export(self, body: bytes, context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receive(body)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)


class OtlpHttpReceiver(_Receiver):
    """OTLP/HTTP, binary protobuf: POST /v1/traces with an ExportTraceServiceRequest body (gzip or deflate as the
    exporter's Content-Encoding says). `paths` lists every path posted to, found or not."""

    protocol = "http/protobuf"

    def __init__(self, host: str = "127.0.0.1", keep: bool = True) -> None:
        super().__init__(keep)
        self.paths: list[str] = []
        self._server = http.server.ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(receiver: OtlpHttpReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.paths.append(self.path)
            if self.path != TRACES_PATH:
                self._answer(404, b"")
                return
            encoding = self.headers.get("Content-Encoding", "").lower()
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver._receive(body)
            except (OSError, DecodeError, zlib.error):
                self._answer(400, b"")
                return
            self._answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a test's output is not the place for one line per export

    return Handler
