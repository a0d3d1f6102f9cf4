"""Prometheus metrics of a stub process, read at scrape time from the counters the stubs keep anyway.

A collector rather than instrumented counters: the hot path pays nothing, and the numbers cannot drift from GetStats.
Labels are method, status code and service only; no order ids, keys, tokens or amounts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service_stubs.idempotency import ShopService
from service_stubs.stats import CallStats


class StubCollector(Collector):
    def __init__(self, stats: CallStats, services: Mapping[str, ShopService[Any]]) -> None:
        self._stats = stats
        self._services = dict(services)

    def collect(self) -> Iterable[Metric]:
        calls = CounterMetricFamily(
            "saga_stub_calls", "Calls to the stub services by method and outcome code", labels=["method", "code"]
        )
        for method, code, count in self._stats.snapshot():
            calls.add_metric([method, code], count)
        yield calls
        transactions = CounterMetricFamily(
            "saga_stub_store_transactions", "SQLite transactions committed (group commit)", labels=["service"]
        )
        rows = CounterMetricFamily("saga_stub_store_rows", "Rows made durable", labels=["service"])
        keys = GaugeMetricFamily("saga_stub_idempotency_keys", "Idempotency keys held", labels=["service"])
        for name, service in self._services.items():
            transactions.add_metric([name], service.store.transactions)
            rows.add_metric([name], service.store.rows_written)
            keys.add_metric([name], len(service.keys))
        yield transactions
        yield rows
        yield keys


class MetricsEndpoint:
    """The /metrics HTTP endpoint on its own daemon thread, with a registry of its own (several stub servers may
    share a test process)."""

    def __init__(self, listen: str, collector: Collector) -> None:
        host, _, port = listen.rpartition(":")
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(int(port), addr=host, registry=self.registry)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
