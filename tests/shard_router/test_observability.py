"""Observability of the running system, as an operator sees it: the router's /metrics while calls flow and shards
fail, every metric the Grafana dashboard queries present in a live scrape, and the shards' JSON logs carrying the saga
fields and never the payment token or amount. One cluster of real processes (stubs, two shards, router) for the module.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from shard_router import HashRing
from tests.helpers.coordinator import place_request
from tests.helpers.live_cluster import LiveCluster
from tests.helpers.scrape import names, samples, scrape, value

REPO = Path(__file__).parents[2]
SECRET_TOKEN = "tok_ok_Zq9xSecretToken"
SECRET_AMOUNT = 987_654_321


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with LiveCluster(tmp_path_factory.mktemp("obs"), shards=2, json_logs=True, dashboard=False) as c:
        yield c


@pytest.fixture(scope="module")
def stub(live: LiveCluster) -> Iterator[saga_pb2_grpc.SagaCoordinatorStub]:
    with live.channel() as channel:
        yield saga_pb2_grpc.SagaCoordinatorStub(channel)


def _eventually(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(0.1)


def test_router_metrics_count_calls_per_shard_and_code(
    live: LiveCluster, stub: saga_pb2_grpc.SagaCoordinatorStub
) -> None:
    orders = [f"obs-{i}" for i in range(6)]
    for order_id in orders:
        assert stub.PlaceOrder(place_request(order_id), timeout=30).status == saga_pb2.SUCCESS
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSaga(saga_pb2.GetSagaRequest(order_id="obs-missing"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    stub.ListSagas(saga_pb2.ListSagasRequest(), timeout=10)

    text = scrape(live.metrics["router"])
    ring = HashRing(live.shard_ids, 1024)
    for sid in live.shard_ids:
        expected = sum(1 for o in orders if ring.owner(o) == sid)
        assert value(text, "saga_router_forward_seconds_count", method="PlaceOrder", shard=sid) == expected
        assert value(text, "saga_router_forward_seconds_count", method="ListSagas", shard=sid) >= 1
    owner = ring.owner("obs-missing")
    assert value(text, "saga_router_forward_errors_total", method="GetSaga", shard=owner, code="NOT_FOUND") == 1
    assert value(text, "saga_router_forward_errors_total", method="PlaceOrder") == 0
    assert value(text, "saga_router_ring_epoch") == 1
    assert value(text, "saga_router_ring_shards") == 2
    assert value(text, "saga_router_shards_up") == 2
    # Bounded labels: nothing an order, user or payment chose.
    label_values = {v for s in samples(text) for v in s.labels.values()}
    assert not any("obs-" in v or "user-" in v or "tok_" in v for v in label_values)
    # Conventions: counters end in _total, durations are in seconds.
    for family in {s.name for s in samples(text) if s.name.startswith("saga_router_")}:
        assert not re.search(r"_(ms|milliseconds|micros)\b", family)


def test_every_metric_the_grafana_dashboard_queries_exists(
    live: LiveCluster, stub: saga_pb2_grpc.SagaCoordinatorStub
) -> None:
    assert stub.PlaceOrder(place_request("obs-grafana"), timeout=30).status == saga_pb2.SUCCESS
    dashboard = json.loads((REPO / "deploy/grafana/saga-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 10
    # Metric names, not the label names grouped by (saga_type is a label).
    bare = [re.sub(r"\bby \([^)]*\)", "", expr) for expr in exprs]
    used = {m for expr in bare for m in re.findall(r"\b((?:saga|stub|shop)_[a-z_]+)\b", expr)}
    assert used
    live_names: set[str] = set()
    for address in live.metrics.values():
        live_names |= names(scrape(address))
    # saga_replica_* exist only on a shard whose journal Litestream replicates (this cluster's are not): checked against
    # a replicated shard in tests/deploy/test_replication.py, with the alert rules' names.
    replica_only = {m for m in used if m.startswith("saga_replica_")}
    assert replica_only, "the dashboard shows each shard's replica"
    assert sorted(used - replica_only - live_names) == []


def test_logs_carry_saga_fields_and_never_payment_data(
    live: LiveCluster, stub: saga_pb2_grpc.SagaCoordinatorStub
) -> None:
    placed = {
        "obs-log-ok": place_request("obs-log-ok", token=SECRET_TOKEN, amount_cents=SECRET_AMOUNT),
        "obs-log-sold-out": place_request(
            "obs-log-sold-out", token=SECRET_TOKEN, amount_cents=SECRET_AMOUNT, items=[("sold-out-x", 1)]
        ),
        "obs-log-declined": place_request("obs-log-declined", token="tok_declined", amount_cents=SECRET_AMOUNT),
    }
    for req in placed.values():
        stub.PlaceOrder(req, timeout=30)

    records = []
    for sid in live.shard_ids:
        for line in live.log(sid).splitlines():
            if line.startswith("{"):
                records.append(json.loads(line)["record"])
    saga_lines = [r for r in records if r["extra"].get("order_id") in placed]
    assert saga_lines, "no log line carries the orders' ids"
    for r in saga_lines:
        assert r["extra"]["saga_id"] and r["extra"]["process"] in live.shard_ids
    stepped = [r for r in saga_lines if "step" in r["extra"]]
    assert stepped, "no log line inside a step"
    for r in stepped:
        assert r["extra"]["action"] in ("forward", "compensate") and r["extra"]["attempt"] >= 1
    every_log = "".join(live.log(name) for name in live.procs)
    assert SECRET_TOKEN not in every_log
    assert str(SECRET_AMOUNT) not in every_log


def test_a_shard_going_down_shows_in_metrics_and_in_the_routers_health(
    live: LiveCluster, stub: saga_pb2_grpc.SagaCoordinatorStub
) -> None:
    """Last in the module: it kills the shards."""
    ring = HashRing(live.shard_ids, 1024)
    victim = "shard-2"
    on_victim = next(o for o in (f"obs-down-{i}" for i in range(100)) if ring.owner(o) == victim)
    live.kill(victim)
    _eventually(lambda: value(scrape(live.metrics["router"]), "saga_router_shard_up", shard=victim) == 0)
    text = scrape(live.metrics["router"])
    assert value(text, "saga_router_shards_up") == 1
    assert value(text, "saga_router_shard_up", shard="shard-1") == 1
    with pytest.raises(grpc.RpcError) as e:
        stub.GetSaga(saga_pb2.GetSagaRequest(order_id=on_victim), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    text = scrape(live.metrics["router"])
    assert value(text, "saga_router_forward_errors_total", method="GetSaga", shard=victim, code="UNAVAILABLE") == 1

    with live.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return int(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)

        assert status("saga.v1.SagaCoordinator") == health_pb2.HealthCheckResponse.SERVING
        live.kill("shard-1")
        _eventually(lambda: status("saga.v1.SagaCoordinator") == health_pb2.HealthCheckResponse.NOT_SERVING)
        assert status("saga.v1.SagaAdmin") == health_pb2.HealthCheckResponse.NOT_SERVING
        assert status("") == health_pb2.HealthCheckResponse.SERVING  # the process itself is alive
    assert value(scrape(live.metrics["router"]), "saga_router_shards_up") == 0


def test_the_prometheus_config_scrapes_every_metrics_port_make_run_opens() -> None:
    from deploy.local.cluster import load

    cluster = load(REPO / "deploy/local/cluster.toml", env={})
    opened = {p.metrics for p in cluster.processes if p.metrics}
    scraped = set(re.findall(r"\"(\d+\.\d+\.\d+\.\d+:\d+)\"", (REPO / "deploy/grafana/prometheus.yml").read_text()))
    assert opened == scraped and len(opened) == len(cluster.processes)
