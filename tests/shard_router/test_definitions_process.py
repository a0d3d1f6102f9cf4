"""Two saga types through the router, on real processes: the second type committed with `saga-router defs commit`,
sagas of both started while their slow steps run, a shard SIGKILLed and restarted mid-saga, and a new version of the
second type committed meanwhile. Every saga finishes on the version it started on; only new sagas get the new one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml
from google.protobuf import any_pb2

from common.definitions.check import load, order_flow
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.cluster import Cluster, ShardSettings
from tests.helpers.coordinator import place_request
from tests.helpers.stubs import StubControlClient, fault_rule

ROOT = Path(__file__).resolve().parents[2]
LOYALTY_FILE = ROOT / "docs" / "definitions" / "order_loyalty.yaml"
TERMINAL = {saga_pb2.SAGA_STATE_SUCCEEDED, saga_pb2.SAGA_STATE_FAILED, saga_pb2.SAGA_STATE_RESOLVED}


def defs(cluster: Cluster, *args: str) -> str:
    assert cluster.system is not None
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shard_router",
            "defs",
            *args,
            "--config",
            str(cluster.system.router_config),
            "--epochs",
            str(cluster.system.epochs_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def start_request(key: str, no_wait: bool = True) -> saga_pb2.StartSagaRequest:
    packed = any_pb2.Any()
    packed.Pack(place_request(key, user_id=f"user-{key}"))
    return saga_pb2.StartSagaRequest(saga_type="order_loyalty", key=key, input=packed, no_wait=no_wait)


def start_lookups(keys: list[str]) -> list[saga_pb2.GetSagaRequest]:
    return [saga_pb2.GetSagaRequest(saga_type="order_loyalty", key=k) for k in keys]


async def until_finished(
    stub: saga_pb2_grpc.SagaCoordinatorStub, wanted: list[saga_pb2.GetSagaRequest], limit_s: float = 120
) -> list[saga_pb2.Saga]:
    give_up = time.monotonic() + limit_s
    while True:
        sagas = []
        for request in wanted:
            try:
                sagas.append(await stub.GetSaga(request, timeout=10))
            except grpc.aio.AioRpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
        if len(sagas) == len(wanted) and all(s.state in TERMINAL for s in sagas):
            return sagas
        assert time.monotonic() < give_up, [(s.key, s.state) for s in sagas]
        await asyncio.sleep(0.2)


async def test_each_saga_finishes_on_its_version_across_a_shard_kill_and_a_new_commit(tmp_path: Path) -> None:
    v1 = load(LOYALTY_FILE)
    document = yaml.safe_load(LOYALTY_FILE.read_text())
    document["version"] = "2"
    document["steps"] = document["steps"][:4]  # no points any more: the pivot is the last step
    v2_file = tmp_path / "order_loyalty_v2.yaml"
    v2_file.write_text(yaml.safe_dump(document))
    v2 = load(v2_file)
    assert v2.hash != v1.hash

    cluster = Cluster(tmp_path / "cluster", shards=2, settings=ShardSettings(attempt_timeout_ms=10_000))
    await cluster.start()
    try:
        assert "committed order_loyalty version 1" in defs(cluster, "commit", str(LOYALTY_FILE))
        async with (
            grpc.aio.insecure_channel(cluster.router.address) as channel,
            StubControlClient(cluster.stub_address) as control,
        ):
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            # The last steps of both types take two seconds: the sagas are in flight when the shard dies.
            slow = [fault_rule(m, latency_ms=2_000) for m in ("AwardPoints", "ScheduleShipment")]
            await control.set_faults(slow, seed=1)
            keys = [f"p-{i}" for i in range(6)]
            for key in keys:
                started = await stub.StartSaga(start_request(key), timeout=30)
                assert started.definition_hash == v1.hash
                # (Another order: the Order service refuses a second order with the same id, whatever the flow.)
                await stub.PlaceOrder(place_request(f"q{key}", no_wait=True), timeout=30)
            await asyncio.sleep(0.5)
            # A new version of the second type, committed while its sagas run ...
            assert "committed order_loyalty version 2" in defs(cluster, "commit", str(v2_file))
            # ... and a shard killed in the middle of them, then started again on its journal.
            running = [await stub.GetSaga(r, timeout=10) for r in start_lookups(keys)]
            assert any(s.state == saga_pb2.SAGA_STATE_RUNNING for s in running)
            await cluster.kill_shard(0)
            await cluster.start_shard(0)
            await control.clear_faults()

            wanted = start_lookups(keys)
            wanted += [saga_pb2.GetSagaRequest(order_id=f"q{k}") for k in keys]
            sagas = await until_finished(stub, wanted)
            ledgers = await control.get_ledgers(keys)

            loyal, orders = sagas[: len(keys)], sagas[len(keys) :]
            assert all(s.state == saga_pb2.SAGA_STATE_SUCCEEDED for s in sagas), [
                (s.saga_type, s.key, s.state, s.last_error) for s in sagas if s.state != saga_pb2.SAGA_STATE_SUCCEEDED
            ]
            assert {s.definition_hash for s in loyal} == {v1.hash}
            assert {s.definition_hash for s in orders} == {order_flow().hash}
            for s in loyal:
                assert [st.step_id for st in s.steps][-1] == "award_points"  # v1's fifth step ran ...
                points = {p.user_id: p.balance for p in ledgers[s.key].points}
                assert points == {f"user-{s.key}": 2_500}  # ... once, with v1's mapping

            # The killed shard held some of them, unfinished, and resumed them from its journal.
            assert "resuming" in cluster.nodes[0].log()

            # New sagas of the type get the version committed last.
            new = await stub.StartSaga(start_request("p-new", no_wait=False), timeout=60)
            assert new.state == saga_pb2.SAGA_STATE_SUCCEEDED and new.definition_hash == v2.hash
            assert not (await control.get_ledgers(["p-new"]))["p-new"].points
    finally:
        await cluster.stop()
