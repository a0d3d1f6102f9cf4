"""One benchmark run: a fresh cluster, load generator processes, CPU and /metrics read at both ends of the measured
window, the services' ledgers checked afterwards, everything started stopped again (also on Ctrl-C and errors).
Session is the same in parts: a cluster measured over several windows (two of them, alternated, compare)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from bench.otlp import OtlpHttpReceiver, OtlpReceiver

from . import ledger
from .cluster import REPO_ROOT, Cluster
from .loadgen import Spec
from .probes import cpu_seconds, machine_busy_seconds, metric_sum
from .profiling import Profiler

KINDS = ("router", "shard", "stubs", "loadgen")


class BenchError(RuntimeError):
    """The run could not be measured (a process died, a worker failed); the message says which."""


@dataclass(frozen=True)
class RunConfig:
    mode: str = "closed"
    """closed | open"""
    shards: int = 3
    concurrency: int = 64
    """Closed loop: callers in all; open loop: bound on calls outstanding."""
    sagas: int = 2_000
    """Measured sagas."""
    warmup: int = 200
    """Sagas before the measured window (the same concurrency), not measured."""
    rate: float = 0.0
    """Open loop: orders per second in all."""
    fail_rate: float = 0.0
    """Fraction of orders paid with the declined token (they compensate)."""
    loadgen_procs: int = 1
    direct: bool = False
    """Load generators call the owning shard directly (client-side routing), not through the router."""
    seed: int = 1
    keep: bool = False
    """Keep the run's directory (journals, logs) instead of deleting it."""
    profile_dir: str = ""
    """If set: py-spy records every router, shard and stubs process over the measured window into this directory."""
    profile_native: bool = False
    """py-spy --native: C/C++ frames too (gRPC core, uvloop, SQLite); slower sampling, larger files."""
    tls: bool = False
    """Mutual TLS on every hop, load generators included (LocalSystem's local CA)."""
    tracing: bool = False
    """Every process exports traces over OTLP (common.tracing) to a receiver in the bench process that counts them."""
    trace_ratio: float | None = None
    """With tracing: the SDK's own variables ask every process for parentbased_traceidratio at this ratio (None:
    the SDK's default, every trace)."""
    scrape_cost: bool = False
    """After the window: CPU of a /metrics scrape in each process (20 scrapes each), and what scraping every
    SCRAPE_INTERVAL_S costs a saga at the run's throughput."""
    otlp_protocol: str = "grpc"
    """With tracing: the OTLP protocol the processes export over ("grpc" or "http/protobuf")."""
    commit_window_ms: float | None = None
    """The shards' [group_commit] window_ms (None: their default; 0: no window)."""
    definition: str = ""
    """A definition file committed (saga-router defs commit) before the load: the sagas are StartSagas of its type,
    with the order as their input. "": PlaceOrder, the order flow."""

    @property
    def label(self) -> str:
        if self.mode == "open":
            base = f"open-r{self.rate:g}"
        else:
            base = f"closed-c{self.concurrency}"
        if self.fail_rate:
            base += f"-fail{self.fail_rate:g}"
        if self.direct:
            base += "-direct"
        if self.tls:
            base += "-tls"
        if self.tracing:
            base += "-otel" if self.otlp_protocol == "grpc" else "-otelhttp"
            if self.trace_ratio is not None:
                base += f"{self.trace_ratio:g}"
        if self.commit_window_ms is not None:
            base += f"-cw{self.commit_window_ms:g}"
        if self.definition:
            base += f"-{Path(self.definition).stem}"
        return f"{base}-s{self.shards}"


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _cpu_by_kind(pids: dict[str, list[int]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind, kind_pids in pids.items():
        total = 0.0
        for pid in kind_pids:
            try:
                total += cpu_seconds(pid)
            except OSError as e:
                raise BenchError(f"{kind} process {pid} is gone: {e}") from e
        out[kind] = total
    return out


def _counters(cluster: Cluster) -> dict[str, float]:
    shard_text = [c.metrics_text() for c in cluster.of_kind("shard")]
    stubs_text = cluster.of_kind("stubs")[0].metrics_text()
    router_text = [c.metrics_text() for c in cluster.of_kind("router")]

    def shards(name: str) -> float:
        return sum(metric_sum(t, name) for t in shard_text)

    return {
        "journal_commits": shards("saga_journal_commits_total"),
        "sagas_started": shards("saga_started_total"),
        "stub_transactions": metric_sum(stubs_text, "saga_stub_store_transactions_total"),
        "stub_calls": metric_sum(stubs_text, "saga_stub_calls_total"),
        # Time spent, summed over the window (the c=1 budget: where each millisecond of a saga goes).
        "router_forward_s": sum(metric_sum(t, "saga_router_forward_seconds_sum") for t in router_text),
        "place_order_s": shards("saga_place_order_seconds_sum"),
        "journal_commit_s": shards("saga_journal_commit_seconds_sum"),
        "step_calls_s": shards("saga_step_duration_seconds_sum"),
        "stub_commit_s": metric_sum(stubs_text, "saga_stub_store_commit_seconds_total"),
    }


def _read_line(proc: subprocess.Popen[str], name: str, expect: str) -> None:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait()
            raise BenchError(f"{name} exited with code {proc.returncode} before saying {expect!r}")
        if line.strip() == expect:
            return
        print(f"  {name}: {line.rstrip()}", file=sys.stderr)


def _specs(cfg: RunConfig, cluster: Cluster, workdir: Path, saga_type: str = "order") -> list[Spec]:
    router = cluster.router_address
    shards = tuple((c.name, c.address) for c in cluster.of_kind("shard"))
    n = cfg.loadgen_procs
    run_id = f"b{int(time.time() * 1000) % 10**10}"
    specs = []
    for w in range(n):
        share = cfg.sagas // n + (1 if w < cfg.sagas % n else 0)
        specs.append(
            Spec(
                router=router,
                run_id=run_id,
                worker=w,
                mode=cfg.mode,
                sagas=share,
                warmup=cfg.warmup // n + (1 if w < cfg.warmup % n else 0),
                concurrency=max(1, cfg.concurrency // n + (1 if w < cfg.concurrency % n else 0)),
                rate=cfg.rate / n,
                fail_rate=cfg.fail_rate,
                seed=cfg.seed,
                result_path=str(workdir / f"loadgen-{w}.json"),
                shards=shards,
                direct=cfg.direct,
                saga_type=saga_type,
            )
        )
    return specs


def run(cfg: RunConfig, log: IO[str] = sys.stderr) -> dict[str, Any]:
    """Runs the benchmark once; returns the figures (the JSON line's content)."""
    with Session(cfg, log) as session:
        figures = session.measure()
        figures.update(session.finish())
        return figures


class Session:
    """One cluster under load, started and warmed up once (with), then measured one window at a time (measure(): each
    a fresh batch of cfg.sagas orders), then its ledgers checked and its span count read (finish()), and everything
    it started stopped again on the way out (also on Ctrl-C and errors). Two sessions measured in alternating
    windows compare two builds or settings under the same minute of the machine (`--tracing compare --windows`)."""

    def __init__(self, cfg: RunConfig, log: IO[str] = sys.stderr) -> None:
        self.cfg = cfg
        self._log = log
        self._workdir = Path(tempfile.mkdtemp(prefix="saga-bench-"))
        self._receiver: OtlpReceiver | OtlpHttpReceiver | None = None
        self._cluster: Cluster | None = None
        self._workers: list[subprocess.Popen[str]] = []
        self._specs: list[Spec] = []
        self._pids: dict[str, list[int]] = {}
        self._results: list[dict[str, Any]] = []
        self._stopped = False
        self._profiler: Profiler | None = None

    def __enter__(self) -> Session:
        try:
            self._start()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _start(self) -> None:
        cfg, log = self.cfg, self._log
        # The SDK's default batching (a batch every 5 s or 512 spans), as a production process would export.
        if cfg.tracing:
            self._receiver = (OtlpReceiver if cfg.otlp_protocol == "grpc" else OtlpHttpReceiver)(keep=False).start()
        shard_config = "" if cfg.commit_window_ms is None else f"[group_commit]\nwindow_ms = {cfg.commit_window_ms:g}\n"
        env = self._receiver.environment(None) if self._receiver else None
        if env is not None and cfg.trace_ratio is not None:
            env |= {
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": f"{cfg.trace_ratio:g}",
            }
        cluster = self._cluster = Cluster(self._workdir, cfg.shards, tls=cfg.tls, env=env, shard_config=shard_config)
        print(f"starting stubs, {cfg.shards} shard(s) and the router in {self._workdir}", file=log)
        cluster.start()
        saga_type = cluster.commit_definition(cfg.definition) if cfg.definition else "order"
        specs = _specs(cfg, cluster, self._workdir, saga_type)
        if cfg.tls:
            files = cluster.client_tls("client")
            specs = [replace(s, tls=(str(files.cert), str(files.key), str(files.ca))) for s in specs]
        self._specs = specs
        for spec in specs:
            self._workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.loadgen", json.dumps(asdict(spec))],
                    cwd=REPO_ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        print(f"warming up ({cfg.warmup} sagas), then measuring {cfg.sagas} sagas ({cfg.label})", file=log)
        for i, w in enumerate(self._workers):
            _read_line(w, f"loadgen-{i}", "ready")
        self._pids = {kind: [c.pid for c in cluster.of_kind(kind)] for kind in ("router", "shard", "stubs")}
        self._pids["loadgen"] = [w.pid for w in self._workers]

    def measure(self) -> dict[str, Any]:
        """One measured window of cfg.sagas orders: its figures."""
        cfg, cluster, pids = self.cfg, self._cluster, self._pids
        assert cluster is not None
        if cfg.profile_dir:
            self._profiler = Profiler(
                Path(cfg.profile_dir), {c.name: c.pid for c in cluster.children}, native=cfg.profile_native
            )
            self._profiler.start()
        counters_before = _counters(cluster)
        cpu_before = _cpu_by_kind(pids)
        cpu_before["machine"] = machine_busy_seconds()
        window_start = time.monotonic()
        for w in self._workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        for i, w in enumerate(self._workers):
            _read_line(w, f"loadgen-{i}", "done")
        window_s = time.monotonic() - window_start
        cpu_after = _cpu_by_kind(pids)
        cpu_after["machine"] = machine_busy_seconds()
        counters_after = _counters(cluster)
        if self._profiler is not None:
            self._profiler.stop()
        results = [json.loads(Path(s.result_path).read_text()) for s in self._specs]
        self._results.extend(results)
        figures = _figures(cfg, results, cpu_before, cpu_after, counters_before, counters_after, window_s)
        if cfg.scrape_cost:
            figures.update(_scrape_cost(cluster, pids, figures["throughput_sagas_per_s"]))
        if self._profiler is not None:
            figures["profiles"] = self._profiler.outputs
            self._profiler = None
        return figures

    def finish(self) -> dict[str, Any]:
        """The services' ledgers checked against every window's orders; with tracing, the spans received (the
        processes flush their last batch as they exit: the SDK's batching trails by up to 5 s). Both are the
        session's totals, warm-up included for the spans, whatever the number of windows."""
        cluster = self._cluster
        assert cluster is not None
        print("checking the services' ledgers", file=self._log)
        results = self._results
        order_ids = [o for r in results for o in r["order_ids"]]
        outcomes = [o for r in results for o in r["outcomes"]]
        declined = [d for r in results for d in r["declined"]]
        checked = ledger.check(cluster.stubs_address, order_ids, outcomes, declined, cluster.client_tls("operator"))
        figures: dict[str, Any] = {
            "ledger_checked": checked.checked,
            "ledger_failed_verified": checked.failed_checked,
            "ledger_violations": len(checked.violations),
        }
        for v in checked.violations[:10]:
            print(f"  ledger violation: {v}", file=self._log)
        if self._receiver is not None:
            self._stop_workers(graceful=True)
            cluster.stop()
            self._stopped = True
            figures["spans_received"] = self._receiver.span_count
            figures["otlp_bytes_received"] = self._receiver.bytes
        return figures

    def _stop_workers(self, graceful: bool) -> None:
        """graceful: every loadgen told to leave (its stdin closed) and waited for, under one deadline; otherwise (an
        error, Ctrl-C) killed at once: a loadgen in the middle of a window reads no stdin."""
        for w in self._workers:
            if graceful and w.stdin is not None and not w.stdin.closed:
                with contextlib.suppress(OSError):
                    w.stdin.close()  # the loadgen's cue to leave
        deadline = time.monotonic() + 10
        for w in self._workers:
            if graceful:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.wait(timeout=max(0.0, deadline - time.monotonic()))
            if w.poll() is None:
                w.kill()
            w.wait()
            for stream in (w.stdin, w.stdout):
                if stream is not None and not stream.closed:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._workers = []

    def _close(self) -> None:
        try:
            if self._profiler is not None:
                self._profiler.stop()
        finally:
            try:
                self._stop_workers(graceful=False)
            finally:
                try:
                    if self._cluster is not None and not self._stopped:
                        self._cluster.stop()
                finally:
                    try:
                        if self._receiver is not None:
                            self._receiver.stop()
                    finally:
                        if self.cfg.keep:
                            print(f"kept {self._workdir}", file=self._log)
                        else:
                            shutil.rmtree(self._workdir, ignore_errors=True)


SCRAPE_INTERVAL_S = 5.0
"""The scrape interval of deploy/grafana/prometheus.yml (the Kubernetes PodMonitors scrape every 15 s)."""


def _scrape_cost(cluster: Cluster, pids: dict[str, list[int]], throughput: float, scrapes: int = 20) -> dict[str, Any]:
    """Server CPU of one /metrics scrape by process kind (ms, the mean of `scrapes` in a row on an idle cluster) and,
    scraping every process every SCRAPE_INTERVAL_S, the CPU that adds per saga at `throughput`."""
    kinds = ("router", "shard", "stubs")
    before = _cpu_by_kind({k: pids[k] for k in kinds})
    for _ in range(scrapes):
        for member in cluster.children:
            member.metrics_text()
    after = _cpu_by_kind({k: pids[k] for k in kinds})
    per_scrape_ms = {k: (after[k] - before[k]) * 1e3 / scrapes / len(pids[k]) for k in kinds}
    sagas_per_interval = max(throughput, 1e-9) * SCRAPE_INTERVAL_S
    return {
        "scrape_cpu_ms": {k: round(v, 3) for k, v in per_scrape_ms.items()},
        "scrape_cpu_ms_per_saga": {
            k: round(v * len(pids[k]) / sagas_per_interval, 4) for k, v in per_scrape_ms.items()
        },
    }


def _figures(
    cfg: RunConfig,
    results: list[dict[str, Any]],
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    before: dict[str, float],
    after: dict[str, float],
    window_s: float,
) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    for r in results:
        for outcome, latency in zip(r["outcomes"], r["latencies_ms"], strict=True):
            outcomes[outcome] += 1
            if outcome in ("SUCCESS", "FAILED", "PENDING"):
                latencies.append(latency)
    latencies.sort()
    answered = len(latencies)
    errors = sum(n for o, n in outcomes.items() if o not in ("SUCCESS", "FAILED", "PENDING"))
    started = min(r["started_mono"] for r in results)
    ended = max(r["ended_mono"] for r in results)
    elapsed_s = max(ended - started, 1e-9)
    per = max(answered, 1)
    commits = after["journal_commits"] - before["journal_commits"]
    ours = sum(cpu_after[k] - cpu_before[k] for k in KINDS)
    others = max(0.0, cpu_after["machine"] - cpu_before["machine"] - ours)
    return {
        "mode": cfg.mode,
        "label": cfg.label,
        "shards": cfg.shards,
        "concurrency": cfg.concurrency,
        "rate": cfg.rate,
        "fail_rate": cfg.fail_rate,
        "loadgen_procs": cfg.loadgen_procs,
        "direct": cfg.direct,
        "sagas": sum(outcomes.values()),
        "elapsed_s": round(elapsed_s, 3),
        "throughput_sagas_per_s": round(answered / elapsed_s, 1),
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p95_ms": round(_percentile(latencies, 0.95), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(latencies[-1] if latencies else 0.0, 2),
        "mean_ms": round(sum(latencies) / per, 2),
        "errors": errors,
        "outcomes": dict(sorted(outcomes.items())),
        "cpu_ms_per_saga": {k: round((cpu_after[k] - cpu_before[k]) * 1e3 / per, 3) for k in KINDS},
        "cpu_cores_busy": {k: round((cpu_after[k] - cpu_before[k]) / window_s, 2) for k in KINDS},
        "journal_commits_per_saga": round(commits / per, 3),
        # synchronous=FULL in WAL mode: each commit ends in one fsync of the WAL (checkpoints, every ~1000 pages,
        # add two more and are not counted here).
        "fsyncs_per_saga": round(commits / per, 3),
        "shard_sagas_started": int(after["sagas_started"] - before["sagas_started"]),
        "stub_calls_per_saga": round((after["stub_calls"] - before["stub_calls"]) / per, 2),
        "stub_commits_per_saga": round((after["stub_transactions"] - before["stub_transactions"]) / per, 3),
        # CPU that processes outside this run used meanwhile (other tests on a shared machine): if it is not near
        # zero, throughput and latency are understated; CPU per saga is not affected.
        "other_cores_busy": round(others / window_s, 2),
        "open_loop_sender_lag_max_ms": round(max(r["lag_max_ms"] for r in results), 2),
        "cores": os.cpu_count() or 0,
        "time_ms_per_saga": {
            name: round((after[key] - before[key]) * 1e3 / per, 3)
            for name, key in (
                ("router_forward", "router_forward_s"),
                ("place_order", "place_order_s"),
                ("journal_commits", "journal_commit_s"),
                ("service_calls", "step_calls_s"),
                ("stub_writes", "stub_commit_s"),
            )
        },
    }
