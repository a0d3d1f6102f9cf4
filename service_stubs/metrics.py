"""Prometheus metrics of a stub process, read at scrape time from the counters the stubs keep anyway.

A collector rather than instrumented counters: the hot path pays nothing, and the numbers cannot drift from GetStats.
Labels are method, status code and service only; no order ids, keys, tokens or amounts. The endpoint that serves it is
common.metrics_http.MetricsServer, every process's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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
