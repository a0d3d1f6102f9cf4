"""Metrics and logs of a real shard process: the names an operator relies on, and no payment data anywhere."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import prometheus_client

from coordinator.saga.model import SagaState
from protos.saga.v1 import saga_pb2
from tests.coordinator.conftest import Harness
from tests.helpers.coordinator import SagaClient, ShardProcess, place_request
from tests.helpers.net import free_port
from tests.helpers.stubs import StubControlClient, fault_rule, running_stubs

SECRET_TOKEN = "tok_zz_secret_93417"
SECRET_AMOUNT = 987_654_321


async def test_metrics_and_logs(tmp_path: Path) -> None:
    metrics_port = free_port()
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        await control.set_faults([fault_rule("ReserveInventory", error_rate=0.5, error_code="UNAVAILABLE")], seed=3)
        shard = ShardProcess(
            tmp_path,
            stubs.address,
            env={"SAGA_LOG_JSON": "1", "SAGA_LOG_LEVEL": "DEBUG", "SAGA_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
        )
        await asyncio.to_thread(shard.start)
        try:
            async with SagaClient(shard.address) as client:
                for i in range(6):
                    token = "tok_declined" if i % 3 == 0 else SECRET_TOKEN
                    await client.place(place_request(f"m-{i}", token=token, amount_cents=SECRET_AMOUNT))
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
                )
        finally:
            shard.terminate()
    text = body.decode()
    for name in [
        "saga_started_total 6.0",
        'saga_completed_total{outcome="succeeded"} 4.0',
        'saga_completed_total{outcome="failed"} 2.0',
        'saga_in_flight{state="running"} 0.0',
        "saga_duration_seconds_bucket",
        'saga_step_duration_seconds_bucket{action="forward",le="0.005",saga_type="order",step="process_payment"}',
        'saga_step_attempts_total{action="compensate",code="OK",saga_type="order",step="create_order"}',
        'saga_step_retries_total{action="forward",code="UNAVAILABLE",saga_type="order",step="reserve_inventory"}',
        "saga_dead_letters_open 0.0",
        "saga_oldest_in_flight_age_seconds",
        "saga_journal_commit_seconds_bucket",
        "saga_journal_batch_records_bucket",
        "saga_journal_commits_total",
        "saga_journal_wal_bytes",
        "saga_ttl_expired_total 0.0",
        "saga_shed_total 0.0",
    ]:
        assert name in text, f"{name} missing from /metrics"
    assert "m-1" not in text and SECRET_TOKEN not in text and str(SECRET_AMOUNT) not in text
    # Idle after the orders: a handful of tasks (server, journal writer, ...), none per finished saga.
    tasks = [float(line.split()[1]) for line in text.splitlines() if line.startswith("saga_asyncio_tasks ")]
    assert tasks and 0 < tasks[0] < 30, tasks

    log = shard.log()
    assert SECRET_TOKEN not in log and str(SECRET_AMOUNT) not in log
    records = [json.loads(line)["record"] for line in log.splitlines() if line.startswith("{")]
    step_lines = [r["extra"] for r in records if "step" in r["extra"]]
    assert step_lines, "no line carried step fields"
    for extra in step_lines:
        assert {"saga_id", "order_id", "step", "action", "attempt"} <= extra.keys()
    assert any(e["order_id"] == "m-1" and e["action"] == "forward" for e in step_lines)
    assert any(r["message"].startswith("saga FAILED") and r["extra"]["order_id"] == "m-0" for r in records)
    assert saga_pb2.SUCCESS  # the import is the proto the shard speaks


async def test_a_scrape_from_the_metrics_thread_never_meets_the_live_sagas_mid_change(harness: Harness) -> None:
    """The metrics endpoint's thread computes the in-flight and waiting gauges while the event loop adds and removes
    sagas. It once walked the live-saga dict in Python and met it mid-change: RuntimeError, a 500 to the scraper (the
    refunds-under-kills test saw it while 150 orders were being placed). Fails on that code within a second."""
    shard = harness.shard
    assert shard is not None
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                prometheus_client.generate_latest(shard.metrics.registry)
            except BaseException as e:  # the test reports whatever the scrape raised
                errors.append(e)
                return

    # What the gauges read of a live saga: its record's state and creation time.
    standin = SimpleNamespace(record=SimpleNamespace(state=SagaState.RUNNING, created_at_epoch_ms=0))
    scraper = threading.Thread(target=scrape)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over every few bytecodes: a switch mid-walk within milliseconds
    scraper.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not errors:
            for j in range(200):
                shard._live[f"standin-{j}"] = standin  # type: ignore[assignment]
            await asyncio.sleep(0)
            for j in range(200):
                del shard._live[f"standin-{j}"]
            await asyncio.sleep(0)
    finally:
        stop.set()
        sys.setswitchinterval(switch)
        await asyncio.to_thread(scraper.join, 10)
    assert not errors, errors
