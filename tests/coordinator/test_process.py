"""The shard as a process: configuration errors, SIGTERM with sagas in flight, and resuming them at the next start."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc

from protos.saga.v1 import saga_pb2
from service_stubs.invariants import ledger_violations
from tests.helpers.coordinator import REPO_ROOT, SagaClient, ShardProcess, place_request
from tests.helpers.stubs import StubControlClient, fault_rule, running_stubs


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[forward]\nmax_attempts = 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "--config", str(bad), "--journal", str(tmp_path / "j.db")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "bad configuration: forward.max_attempts must be >= 1" in out.stderr
    assert "Traceback" not in out.stderr


async def test_sigterm_with_sagas_in_flight_then_resume(tmp_path: Path) -> None:
    async with (
        running_stubs(tmp_path / "stubs", slow_token_delay_s=1.0) as stubs,
        StubControlClient(stubs.address) as control,
    ):
        shard = ShardProcess(tmp_path, stubs.address)
        await asyncio.to_thread(shard.start)
        try:
            async with SagaClient(shard.address) as client:
                ids = [f"t-{i}" for i in range(20)]
                for order_id in ids:
                    resp = await client.place(place_request(order_id, token="tok_slow", no_wait=True))
                    assert resp.status == saga_pb2.PENDING
            await asyncio.sleep(0.3)  # the charges are in flight
            assert await asyncio.to_thread(shard.terminate) == 0
            assert "stopped" in shard.log()
            # On a busy machine the first sagas may have ended before the SIGTERM: resumed are those the journal holds
            # unfinished (the last ones placed, with their 1 s charges, at least).
            with sqlite3.connect(f"file:{shard.journal}?mode=ro", uri=True) as db:
                unfinished = db.execute("SELECT count(*) FROM sagas WHERE state IN (1, 2)").fetchone()[0]
            assert unfinished > 0
            await asyncio.to_thread(shard.start)
            async with SagaClient(shard.address) as client:
                answers = await asyncio.gather(*(client.place(place_request(i, token="tok_slow")) for i in ids))
                assert {a.status for a in answers} == {saga_pb2.SUCCESS}
                ledgers = await control.get_ledgers(ids)
                for order_id in ids:
                    assert ledger_violations(order_id, saga_pb2.SUCCESS, ledgers[order_id]) == []
            assert f"{unfinished} sagas resumed" in shard.log()
        finally:
            shard.terminate()


async def test_overload_bursts_shed_fast_and_memory_stays_flat(tmp_path: Path) -> None:
    limit = 40
    async with running_stubs(tmp_path / "stubs") as stubs, StubControlClient(stubs.address) as control:
        await control.set_faults([fault_rule("CreateOrder", latency_ms=400)], seed=1)
        shard = ShardProcess(tmp_path, stubs.address, extra_config=f"[limits]\nmax_in_flight = {limit}\n")
        await asyncio.to_thread(shard.start)
        try:
            async with SagaClient(shard.address) as client:
                rss = []
                for burst in range(3):
                    finished: list[tuple[float, str]] = []

                    async def one(i: int, burst: int = burst, finished: list = finished) -> None:
                        try:
                            resp = await client.place(place_request(f"b{burst}-{i}"))
                            outcome = saga_pb2.PlaceOrderStatus.Name(resp.status)
                        except grpc.aio.AioRpcError as e:
                            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                            assert int(dict(e.trailing_metadata() or ())["retry-after-ms"]) > 0
                            outcome = "SHED"
                        finished.append((time.monotonic(), outcome))

                    await asyncio.gather(*(one(i) for i in range(5 * limit)))
                    outcomes = [o for _, o in finished]
                    assert outcomes.count("SUCCESS") >= limit // 2 and outcomes.count("SHED") >= 3 * limit
                    assert set(outcomes) <= {"SUCCESS", "SHED"}
                    # Shed answers come back at once, before any accepted saga (each takes >= 400 ms) has finished.
                    first_success = min(t for t, o in finished if o == "SUCCESS")
                    assert max(t for t, o in finished if o == "SHED") < first_success
                    rss.append(shard.rss_kib())
                assert rss[2] - rss[0] < 20_000, f"RSS grew across bursts: {rss} KiB"
        finally:
            shard.terminate()
