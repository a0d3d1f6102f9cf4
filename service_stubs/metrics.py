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
        operations = CounterMetricFamily(
            "saga_stub_operations",
            "Long-running operations by method and event (accepted, completed, cancelled)",
            labels=["method", "event"],
        )
        for method, events in self._stats.operations().items():
            for event, count in events.items():
                operations.add_metric([method, event.value], count)
        yield operations
        transactions = CounterMetricFamily(
            "saga_stub_store_transactions", "SQLite transactions committed (group commit)", labels=["service"]
        )
        commit_seconds = CounterMetricFamily(
            "saga_stub_store_commit_seconds", "Time in SQLite transactions, fsync included", labels=["service"]
        )
        rows = CounterMetricFamily("saga_stub_store_rows", "Rows made durable", labels=["service"])
        keys = GaugeMetricFamily("saga_stub_idempotency_keys", "Idempotency keys held", labels=["service"])
        in_progress = GaugeMetricFamily(
            "saga_stub_operations_in_progress", "Long-running operations accepted and not finished", labels=["service"]
        )
        for name, service in self._services.items():
            transactions.add_metric([name], service.store.transactions)
            commit_seconds.add_metric([name], service.store.commit_seconds)
            rows.add_metric([name], service.store.rows_written)
            keys.add_metric([name], len(service.keys))
            in_progress.add_metric([name], len(service.in_progress))
        yield transactions
        yield commit_seconds
        yield rows
        yield keys
        yield in_progress
