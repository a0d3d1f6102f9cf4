"""Prometheus metrics of one shard, in a registry of its own (several shards may share a test process).

Names follow Prometheus conventions (base units, _total, _seconds); labels are bounded: saga type (a definition's name),
step (its id), action, gRPC code name, outcome, state. Never an order id, a key, a token or an amount. The step
metrics carry the saga type: a step id names a step within its definition.

    saga_started_total                              sagas accepted
    saga_completed_total{outcome}                   succeeded | failed | dead_lettered | resolved
    saga_in_flight{state}                           running | compensating (live now)
    saga_dead_letters_open                          parked sagas an operator must look at
    saga_oldest_in_flight_age_seconds               age of the oldest live saga (stuck-saga detector)
    saga_duration_seconds{outcome}                  acceptance to terminal/parked
    saga_ttl_expired_total                          sagas whose deadline made them compensate
    saga_shed_total                                 PlaceOrder refused with RESOURCE_EXHAUSTED
    saga_place_order_seconds                        PlaceOrder at this shard, arrival to answer
    saga_step_duration_seconds{saga_type,step,action}     one downstream attempt
    saga_step_attempts_total{saga_type,step,action,code}  downstream attempts by reply code
    saga_step_retries_total{saga_type,step,action,code}   attempts that were retried
    saga_compensation_failures_total{saga_type,step}      compensations that exhausted their policy
    saga_forward_parked_total{saga_type,step}       retriable steps (past the pivot) that exhausted their policy
    saga_journal_commit_seconds                     one group commit (execute + fsync)
    saga_journal_batch_records                      records per commit
    saga_journal_commit_window_seconds              a commit's wait in the commit window (when it waited)
    saga_journal_commits_total                      transactions committed (each ends in an fsync: synchronous=FULL)
    saga_journal_wal_bytes                          size of the -wal file
    saga_journal_file_bytes                         size of the journal file (the -wal file apart)
    saga_journal_free_pages                         pages free inside the file (reused, or returned by vacuum steps)
    saga_journal_rows{table}                        rows per table (sagas, saga_events, dead_letters, order_dedup,
                                                    operator_events)
    saga_journal_oldest_row_age_seconds{table}      age of each table's oldest row (0: empty)
    saga_journal_upkeep_seconds{job}                one upkeep job on the writer (retire, forget_orders, forget_audit,
                                                    vacuum, checkpoint): how long saga commits waited behind it
    saga_retention_removed_total{what}              sagas removed (sagas), dedup records expired (dedup), operators'
                                                    actions past the audit period (audit)
    saga_retention_archived_total                   sagas written to the archive before removal
    saga_journal_checkpoints_total{result}          upkeep checkpoints: done | busy (TRUNCATE; a reader held the WAL) |
                                                    passive (beside the writer, under load)
    saga_journal_checkpoint_seconds                 one passive checkpoint (the writer does not wait for it)
    saga_replica_up                                 1 while Litestream replicates the journal (replication.py; these
                                                    four only on a shard with a replica)
    saga_replica_last_sync_age_seconds              since its last successful sync
    saga_replica_txid                               last journal transaction Litestream has taken
    saga_replica_lagging                            1 past replication.max_lag_s (or Litestream down)
    saga_operations_accepted_total{step,action}     calls a service accepted to finish later (long-running)
    saga_operations_waiting{step,action}            sagas waiting on such an operation now
    saga_operation_oldest_age_seconds{step,action}  age of the oldest operation waited on
    saga_operation_duration_seconds{step,action}    acceptance to done, for operations that finished
    saga_operation_answers_total{step,action,answer} GetOperation answers: applied | rejected | failed | in_progress
                                                     | not_found | unknown
                                                    (polls of waiting sagas and questions about unknown outcomes)
    saga_operations_timed_out_total{step,action}    operations still in progress past their step's limit
    saga_compensations_skipped_total{step}          compensations not sent: the service said the forward call
                                                    applied nothing
    saga_ring_epoch                                 newest ring epoch the shard holds (0: none yet)
    saga_ring_refusals_total{reason}                calls refused by fencing: stale | unknown | not-owner | conflict |
                                                    catching-up (a restored journal before its peers answered)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SAGA_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

M = TypeVar("M", Counter, Histogram)


class ShardMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.started = Counter("saga_started", "Sagas accepted", registry=r)
        self.completed = Counter("saga_completed", "Sagas ended or parked, by outcome", ["outcome"], registry=r)
        self.duration = Histogram(
            "saga_duration_seconds", "Saga acceptance to end", ["outcome"], buckets=_SAGA_BUCKETS, registry=r
        )
        self.place_order_seconds = Histogram(
            "saga_place_order_seconds",
            "PlaceOrder handled at this shard, arrival to answer (a synchronous one waits for its saga's end)",
            buckets=_SAGA_BUCKETS,
            registry=r,
        )
        self.ttl_expired = Counter("saga_ttl_expired", "Sagas whose deadline passed", registry=r)
        self.shed = Counter("saga_shed", "PlaceOrder refused for overload", registry=r)
        self.step_duration = Histogram(
            "saga_step_duration_seconds",
            "One downstream attempt",
            ["saga_type", "step", "action"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.step_attempts = Counter(
            "saga_step_attempts",
            "Downstream attempts by reply code",
            ["saga_type", "step", "action", "code"],
            registry=r,
        )
        self.step_retries = Counter(
            "saga_step_retries",
            "Downstream attempts that were retried",
            ["saga_type", "step", "action", "code"],
            registry=r,
        )
        self.compensation_failures = Counter(
            "saga_compensation_failures",
            "Compensations that exhausted their retry policy",
            ["saga_type", "step"],
            registry=r,
        )
        self.forward_parked = Counter(
            "saga_forward_parked",
            "Retriable steps (after the pivot) that exhausted their policy: the saga waits for an operator",
            ["saga_type", "step"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "saga_journal_commit_seconds", "One journal group commit", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.commit_window_seconds = Histogram(
            "saga_journal_commit_window_seconds",
            "Time a commit waited in the commit window for more sagas ([group_commit]; only when it waited)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "saga_journal_batch_records", "Records per journal commit", buckets=_BATCH_BUCKETS, registry=r
        )
        self.commits = Counter("saga_journal_commits", "Journal transactions (one fsync each)", registry=r)
        self.dead_letters_open = Gauge("saga_dead_letters_open", "Open dead letters", registry=r)
        self.upkeep_seconds = Histogram(
            "saga_journal_upkeep_seconds",
            "One upkeep job on the journal writer",
            ["job"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retention_removed = Counter("saga_retention_removed", "Rows removed by retention", ["what"], registry=r)
        self.retention_archived = Counter("saga_retention_archived", "Sagas archived before removal", registry=r)
        self.checkpoints = Counter("saga_journal_checkpoints", "Upkeep WAL checkpoints", ["result"], registry=r)
        self.checkpoint_seconds = Histogram(
            "saga_journal_checkpoint_seconds", "One passive checkpoint", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.journal_rows = Gauge("saga_journal_rows", "Rows per journal table", ["table"], registry=r)
        self.journal_oldest_age = Gauge(
            "saga_journal_oldest_row_age_seconds", "Age of the oldest row per journal table", ["table"], registry=r
        )
        self.journal_free_pages = Gauge("saga_journal_free_pages", "Free pages inside the journal file", registry=r)
        self.ring_epoch = Gauge("saga_ring_epoch", "Newest ring epoch the shard holds", registry=r)
        sa = ["step", "action"]
        self.operations_accepted = Counter(
            "saga_operations_accepted", "Calls a service accepted to finish later", sa, registry=r
        )
        self.operation_duration = Histogram(
            "saga_operation_duration_seconds",
            "Long-running operations, acceptance to done",
            sa,
            registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400),
        )
        self.operation_answers = Counter(
            "saga_operation_answers", "GetOperation answers by what they mean for the saga", [*sa, "answer"], registry=r
        )
        self.operations_timed_out = Counter(
            "saga_operations_timed_out", "Operations still in progress past their limit", sa, registry=r
        )
        self.compensations_skipped = Counter(
            "saga_compensations_skipped",
            "Compensations not sent: the forward call applied nothing",
            ["step"],
            registry=r,
        )

        self.ring_refusals = Counter(
            "saga_ring_refusals", "Calls refused because of the ring epoch they were routed by", ["reason"], registry=r
        )
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Histogram] = {}

    def child(self, metric: M, *labels: str) -> M:
        """metric.labels(*labels), remembered: labels() takes the metric's lock and builds tuples on every call, and
        the engine asks several times per step. Every label here is bounded (steps, actions, codes, outcomes)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def watch_waiting(self, waiting: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        """Gauges computed at scrape time from the sagas waiting on operations: (step, action, age in seconds)."""
        self.registry.register(_WaitingCollector(waiting))

    def watch_live(self, live: Callable[[], Iterable[tuple[str, float]]], wal_path: str) -> None:
        """Gauges computed at scrape time from the shard's live sagas: (state name, age in seconds) pairs. Call it on
        the shard's event loop: the task count is read from that loop."""
        self.registry.register(_LiveCollector(live, wal_path, asyncio.get_running_loop()))


class _LiveCollector(Collector):
    def __init__(
        self, live: Callable[[], Iterable[tuple[str, float]]], wal_path: str, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._live = live
        self._wal = wal_path
        self._loop = loop

    def collect(self) -> Iterable[Metric]:
        counts = {"running": 0, "compensating": 0}
        oldest = 0.0
        for state, age_s in list(self._live()):
            counts[state] = counts.get(state, 0) + 1
            oldest = max(oldest, age_s)
        g = GaugeMetricFamily("saga_in_flight", "Live sagas by state", labels=["state"])
        for state, n in counts.items():
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("saga_oldest_in_flight_age_seconds", "Age of the oldest live saga", value=oldest)
        try:
            wal = os.path.getsize(self._wal)
        except OSError:
            wal = 0
        yield GaugeMetricFamily("saga_journal_wal_bytes", "Size of the journal's WAL file", value=wal)
        try:
            size = os.path.getsize(self._wal.removesuffix("-wal"))
        except OSError:
            size = 0
        yield GaugeMetricFamily("saga_journal_file_bytes", "Size of the journal file", value=size)
        # Leak detector: back to its idle level once the load and the faults stop (asyncio.all_tasks retries if the
        # loop changes its task set while this scrape thread copies it).
        tasks = len(asyncio.all_tasks(self._loop))
        yield GaugeMetricFamily("saga_asyncio_tasks", "Tasks alive on the shard's event loop", value=tasks)


class _WaitingCollector(Collector):
    def __init__(self, waiting: Callable[[], Iterable[tuple[str, str, float]]]) -> None:
        self._waiting = waiting

    def collect(self) -> Iterable[Metric]:
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[tuple[str, str], float] = {}
        for step, action, age_s in list(self._waiting()):
            key = (step, action)
            counts[key] = counts.get(key, 0) + 1
            oldest[key] = max(oldest.get(key, 0.0), age_s)
        n = GaugeMetricFamily("saga_operations_waiting", "Sagas waiting on an operation", labels=["step", "action"])
        age = GaugeMetricFamily(
            "saga_operation_oldest_age_seconds", "Age of the oldest operation waited on", labels=["step", "action"]
        )
        for key in sorted(counts):
            n.add_metric(list(key), counts[key])
            age.add_metric(list(key), oldest[key])
        yield n
        yield age
