"""What the dashboard learns from the shards' Prometheus endpoints: samples of their counters and histograms, summed
over shards, kept for a bounded time, and turned into rates and percentiles.

Only the series the dashboard shows are kept (WANTED). A counter that went down between two samples (a shard restarted)
counts as zero for that interval, so a restart never shows a negative rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from common.loops import run_every
from common.scrape import JOURNAL, Key, get_text, journal_figures
from common.scrape import parse as parse_page
from shard_router.ring.topology import Topology

WANTED = frozenset(
    {
        "saga_started_total",
        "saga_completed_total",
        "saga_in_flight",
        "saga_dead_letters_open",
        "saga_oldest_in_flight_age_seconds",
        "saga_shed_total",
        "saga_ttl_expired_total",
        "saga_step_duration_seconds_bucket",
        "saga_step_duration_seconds_count",
        "saga_step_duration_seconds_sum",
        "saga_step_attempts_total",
        "saga_step_retries_total",
        "saga_compensation_failures_total",
    }
)
_MAXED = frozenset({"saga_oldest_in_flight_age_seconds"})
"""Gauges whose across-shard value is the largest, not the sum."""
OUTCOMES = ("succeeded", "failed", "dead_lettered", "resolved")
PERCENTILE_WINDOW_S = 60.0
"""Percentiles and retry counts cover about the last minute (all time if nothing happened in it)."""


_KEPT = WANTED | JOURNAL
_PREFIXES = tuple(sorted(_KEPT))


def parse(text: str) -> dict[Key, float]:
    """The samples the dashboard keeps (WANTED, JOURNAL) of one /metrics text."""
    return parse_page(text, _KEPT, _PREFIXES)


@dataclass(frozen=True)
class Sample:
    at_s: float
    """Wall-clock seconds."""
    values: Mapping[Key, float]
    """Summed over the shards that answered (the oldest-saga age: the largest)."""
    shards: frozenset[str]
    """Which shards answered; an interval whose set changed gives no rate (a missing shard is not a drop to zero)."""


@dataclass
class ScrapeStatus:
    address: str
    ok: bool = False
    error: str = ""
    at_s: float = 0.0
    journal: dict[str, float] | None = None
    """The shard's journal as its last scrape saw it: file_bytes, wal_bytes, rows.<table>, oldest_age_s.<table>, and
    with a replica replica_up, replica_sync_age_s, replica_lagging."""


class ShardStats:
    def __init__(self, topology: Callable[[], Topology], history_s: float, timeout_s: float = 2.0) -> None:
        self._topology = topology
        self._timeout_s = timeout_s
        self._history_s = history_s
        self.samples: deque[Sample] = deque()
        self.status: dict[str, ScrapeStatus] = {}

    async def _scrape(self, shard_id: str, address: str) -> dict[Key, float] | None:
        status = ScrapeStatus(address, at_s=time.time())
        self.status[shard_id] = status
        try:
            text = await get_text(address, "/metrics", self._timeout_s)
            values = parse(text)
        except (OSError, TimeoutError, ValueError) as e:
            status.error = str(e) or type(e).__name__
            return None
        status.ok = True
        status.journal = journal_figures(values)
        return {key: v for key, v in values.items() if key[0] in WANTED}

    async def sample_once(self) -> Sample:
        topo = self._topology()
        targets = dict(topo.metrics)
        for gone in set(self.status) - set(targets):
            del self.status[gone]
        results = await asyncio.gather(*(self._scrape(sid, addr) for sid, addr in targets.items()))
        total: dict[Key, float] = {}
        answered = set()
        for sid, values in zip(targets, results, strict=True):
            if values is None:
                continue
            answered.add(sid)
            for key, v in values.items():
                if key[0] in _MAXED:
                    total[key] = max(total.get(key, 0.0), v)
                else:
                    total[key] = total.get(key, 0.0) + v
        sample = Sample(time.time(), total, frozenset(answered))
        self.samples.append(sample)
        while self.samples and self.samples[0].at_s < sample.at_s - self._history_s:
            self.samples.popleft()
        return sample

    async def run(self, interval_s: float) -> None:
        """Samples until cancelled; a failing round is logged and the next one runs on time."""
        await run_every(interval_s, self.sample_once, name="dashboard: sampling shard metrics")

    # ---- what the dashboard shows ----------------------------------------------------------------------------------

    def throughput(self) -> list[dict[str, float]]:
        """Per interval between consecutive samples: sagas started and completed (by outcome) per second."""
        out: list[dict[str, float]] = []
        prev: Sample | None = None
        for s in self.samples:
            if prev is not None and s.shards == prev.shards and s.at_s > prev.at_s:
                dt = s.at_s - prev.at_s
                point = {"t": round(s.at_s, 3), "started": _rate(prev, s, "saga_started_total", {}, dt)}
                for outcome in OUTCOMES:
                    point[outcome] = _rate(prev, s, "saga_completed_total", {"outcome": outcome}, dt)
                out.append(point)
            prev = s
        return out

    def now(self) -> dict[str, Any]:
        """The latest gauges: in flight by state, open dead letters, oldest live saga, and a few totals."""
        if not self.samples:
            return {}
        v = self.samples[-1].values
        in_flight = {
            dict(labels).get("state", ""): value for (name, labels), value in v.items() if name == "saga_in_flight"
        }
        return {
            "in_flight": in_flight,
            "dead_letters_open": v.get(("saga_dead_letters_open", ()), 0.0),
            "oldest_in_flight_age_seconds": v.get(("saga_oldest_in_flight_age_seconds", ()), 0.0),
            "started_total": v.get(("saga_started_total", ()), 0.0),
            "shed_total": v.get(("saga_shed_total", ()), 0.0),
            "ttl_expired_total": v.get(("saga_ttl_expired_total", ()), 0.0),
            "completed_total": {o: v.get(("saga_completed_total", (("outcome", o),)), 0.0) for o in OUTCOMES},
        }

    def _window(self) -> tuple[Sample | None, Sample | None, str]:
        """(earlier, latest, label): the latest sample and the one about PERCENTILE_WINDOW_S before it."""
        if not self.samples:
            return None, None, ""
        latest = self.samples[-1]
        for s in self.samples:
            if s.at_s >= latest.at_s - PERCENTILE_WINDOW_S - 1 and s.shards == latest.shards and s is not latest:
                return s, latest, f"last {round(latest.at_s - s.at_s)} s"
        return None, latest, "since start"

    def step_latency(self) -> dict[str, Any]:
        """p50/p99/mean/count per (saga type, step, action), over the window if anything happened in it, else all
        time. Steps keep the order in which their sagas first reported them (a definition's order, for one type)."""
        earlier, latest, label = self._window()
        if latest is None:
            return {"window": "", "steps": []}
        delta = _delta(earlier, latest, "saga_step_duration_seconds_bucket")
        counts = _delta(earlier, latest, "saga_step_duration_seconds_count")
        if earlier is not None and not any(counts.values()):
            earlier, label = None, "since start"
            delta = _delta(None, latest, "saga_step_duration_seconds_bucket")
            counts = _delta(None, latest, "saga_step_duration_seconds_count")
        sums = _delta(earlier, latest, "saga_step_duration_seconds_sum")
        buckets: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        for labels, value in delta.items():
            d = dict(labels)
            le = d.pop("le")
            where = (d.get("saga_type", ""), d.get("step", ""), d.get("action", ""))
            buckets.setdefault(where, []).append((float(le), value))
        steps = []
        for (saga_type, step, action), bs in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][2])):
            key = tuple(sorted({"action": action, "step": step, "saga_type": saga_type}.items()))
            n = counts.get(key, 0.0)
            if n <= 0:
                continue
            bs.sort()
            steps.append(
                {
                    "saga_type": saga_type,
                    "step": step,
                    "action": action,
                    "count": n,
                    "p50_seconds": quantile(0.5, bs),
                    "p99_seconds": quantile(0.99, bs),
                    "mean_seconds": sums.get(key, 0.0) / n,
                }
            )
        return {"window": label, "steps": steps}

    def retries(self) -> dict[str, Any]:
        """Retried attempts by (step, action, code): over the window, and all time."""
        earlier, latest, label = self._window()
        if latest is None:
            return {"window": "", "retries": []}
        recent = _delta(earlier, latest, "saga_step_retries_total")
        total = _delta(None, latest, "saga_step_retries_total")
        rows = []
        for labels, n in sorted(total.items(), key=lambda kv: -kv[1]):
            d = dict(labels)
            rows.append(
                {
                    "saga_type": d.get("saga_type", ""),
                    "step": d.get("step", ""),
                    "action": d.get("action", ""),
                    "code": d.get("code", ""),
                    "recent": recent.get(labels, 0.0),
                    "total": n,
                }
            )
        return {"window": label, "retries": rows}


def _rate(prev: Sample, cur: Sample, name: str, labels: Mapping[str, str], dt: float) -> float:
    key = (name, tuple(sorted(labels.items())))
    return max(0.0, cur.values.get(key, 0.0) - prev.values.get(key, 0.0)) / dt


def _delta(earlier: Sample | None, latest: Sample, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Per label set of one sample name: latest minus earlier (clamped at 0), or latest alone."""
    out = {}
    for (n, labels), value in latest.values.items():
        if n == name:
            before = earlier.values.get((n, labels), 0.0) if earlier is not None else 0.0
            out[labels] = max(0.0, value - before)
    return out


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Like PromQL histogram_quantile: linear interpolation within the bucket that holds the q-th observation.
    buckets: (upper bound, cumulative count), sorted, +Inf last. None if there are no observations."""
    bs = list(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in bs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: the best we can say is "at least"
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
