"""The benchmark harness end to end at toy sizes: every figure present, outcomes adding up, the ledgers checked.
No timing is asserted: the figures only have to exist and be consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

KEYS = {
    "throughput_sagas_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "outcomes",
    "cpu_ms_per_saga",
    "journal_commits_per_saga",
    "fsyncs_per_saga",
    "cores",
    "ledger_violations",
    "results_file",
}


def _bench(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_cluster_run_reports_every_figure(tmp_path: Path) -> None:
    proc = _bench(
        "--sagas", "20", "--warmup", "2", "--shards", "1", "--concurrency", "4", "--fail-rate", "0.3",
        "--floor-calls", "300", "--budget-sagas", "5", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= set(figures), KEYS - set(figures)
    # The gRPC floor of the same invocation, the ratios to it, and the c=1 budget (printed, and in the JSON).
    floor = figures["grpc_floor_us"]
    assert floor["server_us"] > 0 and floor["client_us"] > 0
    # Measured before and after the runs; the ratios use the mean.
    assert floor["server_us"] == round((floor["server_us_before"] + floor["server_us_after"]) / 2, 1)
    assert floor["client_us"] == round((floor["client_us_before"] + floor["client_us_after"]) / 2, 1)
    assert figures["floor_ratio"]["shard"] > 0 and figures["floor_ratio"]["router"] > 0
    assert "over its floor" in proc.stdout and "c=1 budget" in proc.stdout
    budget = figures["budget_c1"]
    assert budget["errors"] == 0 and budget["label"].startswith("closed-c1-")
    assert set(budget["time_ms_per_saga"]) == {
        "router_forward", "place_order", "journal_commits", "service_calls", "stub_writes"
    }  # fmt: skip
    assert 0 < budget["time_ms_per_saga"]["place_order"] < budget["time_ms_per_saga"]["router_forward"]
    assert set(figures["cpu_ms_per_saga"]) == {"router", "shard", "stubs", "loadgen"}
    assert sum(figures["outcomes"].values()) == figures["sagas"] == 20
    assert figures["errors"] == 0
    assert figures["outcomes"].get("FAILED", 0) > 0, "a 30% decline rate over 20 orders declined none (seed 1)"
    assert figures["ledger_checked"] == 20 and figures["ledger_violations"] == 0
    assert figures["shard_sagas_started"] == 20
    assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    saved = json.loads(Path(figures["results_file"]).read_text())
    assert saved["outcomes"] == figures["outcomes"]


def test_direct_run_places_through_a_client_per_shard(tmp_path: Path) -> None:
    # --direct: the load generator holds one sagaclient.SagaClient per shard and picks the owner by the router's ring.
    proc = _bench(
        "--sagas", "12", "--warmup", "2", "--shards", "2", "--concurrency", "4", "--direct", "--no-floor",
        "--no-budget", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["direct"] and figures["errors"] == 0 and figures["outcomes"] == {"SUCCESS": 12}
    assert figures["shard_sagas_started"] == 12
    assert figures["ledger_checked"] == 12 and figures["ledger_violations"] == 0


def test_journal_micro_benchmark_reports_each_case(tmp_path: Path) -> None:
    proc = _bench("journal", "--journal-sagas", "10", "--journal-writers", "4", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    cases = {c["case"]: c for c in figures["cases"]}
    assert set(cases) == {"group commit", "no group commit", "one writer"}
    assert cases["no group commit"]["records_per_commit"] <= 2  # one submission per transaction
    assert all(c["transitions_per_s"] > 0 for c in cases.values())


def test_bad_flag_is_named_not_a_traceback() -> None:
    proc = _bench("--fail-rate", "1.5", timeout_s=20)
    assert proc.returncode == 2
    assert "--fail-rate" in proc.stderr and "Traceback" not in proc.stderr


def test_a_traced_run_exports_spans_to_the_benchs_receiver(tmp_path: Path) -> None:
    proc = _bench(
        "--sagas", "10", "--warmup", "2", "--shards", "1", "--concurrency", "2", "--tracing", "on", "--no-floor",
        "--no-budget", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "-otel-" in figures["label"] and figures["errors"] == 0 and figures["outcomes"] == {"SUCCESS": 10}
    # Each successful saga: the router's span, the shard's 4 attempts and the 4 stub spans (no shard PlaceOrder span
    # under the router's context, no state span for a success; warm-up too); the processes flush as they stop.
    assert figures["spans_received"] >= 10 * 9


def test_relay_run_measures_a_shard_and_a_router_that_only_relay(tmp_path: Path) -> None:
    proc = _bench(
        "relay", "--sagas", "30", "--warmup", "3", "--concurrency", "4", "--budget-sagas", "5",
        "--floor-calls", "300", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["mode"] == "relay" and figures["failures"] == 0
    assert figures["relay_cpu_ms_per_saga"] > 0 and figures["shard_floor_ms"] > 0 and figures["c1_p50_ms"] > 0
    assert figures["proxy_cpu_ms_per_saga"] > 0 and figures["router_floor_ms"] > 0
    assert "relay CPU/saga" in proc.stdout and "proxy CPU/saga" in proc.stdout
    assert Path(figures["results_file"]).parent == tmp_path


def test_a_sampled_traced_run_keeps_its_failed_sagas_and_measures_scrapes(tmp_path: Path) -> None:
    """--trace-ratio 0: no successful saga is sampled, every declined one is exported all the same (its shard's
    spans); --scrape-cost adds the CPU of a /metrics scrape per process kind."""
    proc = _bench(
        "--sagas", "10", "--warmup", "2", "--shards", "1", "--concurrency", "2", "--tracing", "on", "--trace-ratio",
        "0", "--fail-rate", "0.3", "--scrape-cost", "--no-floor", "--no-budget", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "-otel0-" in figures["label"] and figures["errors"] == 0
    failed = figures["outcomes"].get("FAILED", 0)
    assert failed > 0
    # A declined saga's shard spans: 3 forward attempts, 2 compensations, COMPENSATING and FAILED; the services' spans
    # of its compensations (their parents were sampled); nothing of the successful ones.
    assert figures["spans_received"] >= failed * 7
    assert figures["spans_received"] <= (failed + 2) * 9  # the 2 warm-up sagas may be declined too
    assert set(figures["scrape_cpu_ms"]) == {"router", "shard", "stubs"}
    assert all(v > 0 for v in figures["scrape_cpu_ms"].values())


def test_a_run_of_a_second_saga_type(tmp_path: Path) -> None:
    """`--definition FILE`: the file committed as an operator would, then StartSagas of its type (five steps)."""
    proc = _bench(
        "--sagas", "20", "--warmup", "2", "--shards", "1", "--concurrency", "4", "--no-floor", "--no-budget",
        "--definition", "docs/definitions/order_loyalty.yaml", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["label"].endswith("-order_loyalty-s1")
    assert figures["outcomes"] == {"SUCCESS": 20} and figures["errors"] == 0
    assert figures["stub_calls_per_saga"] == 5.0  # the points step too
    assert figures["ledger_checked"] == 20 and figures["ledger_violations"] == 0


def test_a_comparison_pairs_each_round_so_the_machines_drift_cancels() -> None:
    """Round 2 ran in a slow minute (everything cost twice as much, on and off): each side's median would mix the
    minutes, the per-round ratios do not."""
    from bench.__main__ import _paired

    def run(router: float, shard: float, stubs: float, throughput: float) -> dict[str, object]:
        cpu = {"router": router, "shard": shard, "stubs": stubs}
        return {"cpu_ms_per_saga": cpu, "throughput_sagas_per_s": throughput}

    off = [run(1.0, 3.0, 2.0, 300.0), run(2.0, 6.0, 4.0, 150.0), run(1.0, 3.0, 2.0, 300.0)]
    on = [run(1.1, 3.3, 2.2, 270.0), run(2.2, 6.6, 4.4, 135.0), run(1.2, 3.2, 2.2, 280.0)]
    paired = _paired(off, on)
    assert paired["rounds"][1] == {"router+shard": 1.1, "router": 1.1, "shard": 1.1, "stubs": 1.1, "throughput": 0.9}
    assert paired["median"] == {"router+shard": 1.1, "router": 1.1, "shard": 1.1, "stubs": 1.1, "throughput": 0.9}


def test_a_windowed_comparison_measures_both_sides_on_clusters_started_once(tmp_path: Path) -> None:
    """--windows: two clusters, each warmed up once, measured in alternating windows (off, on, on, off); each window
    places new orders (the loadgen serves another `go`), and each side's ledgers cover all its windows."""
    proc = _bench(
        "--sagas", "6", "--warmup", "2", "--shards", "1", "--concurrency", "2", "--tracing", "compare", "--windows",
        "--repeat", "2", "--no-floor", "--no-budget", "--results-dir", str(tmp_path),
        timeout_s=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    windows = [line for line in proc.stdout.splitlines() if line.startswith("window ")]
    assert [w.split(": ")[0] for w in windows] == ["window 1/2"] * 2 + ["window 2/2"] * 2
    assert ["-otel-" in w for w in windows] == [False, True, True, False]
    cost = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cost["paired"]["rounds"]) == 2
    for side in ("off", "on"):
        runs = cost[side]["runs"]
        assert [r["outcomes"] for r in runs] == [{"SUCCESS": 6}, {"SUCCESS": 6}]
        # Every window's orders are in the side's ledgers: 2 windows of 6.
        assert all(r["ledger_checked"] == 12 and r["ledger_violations"] == 0 for r in runs)
    assert cost["on"]["spans_received"] >= 14 * 9  # both windows and the warm-up, flushed as the processes stop
    assert "spans_received" not in cost["off"]
    assert _bench("--windows", timeout_s=20).returncode == 2  # only with a compare
