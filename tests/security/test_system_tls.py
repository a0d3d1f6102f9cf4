"""The whole local system with mutual TLS (deploy.local.LocalSystem(tls=True), real processes on loopback): orders
flow client → router → shard → stubs through each of its routers (and through a third one added to a cluster file the
way deploy/README.md says, under `python -m deploy.local --tls`), every hop refuses plaintext, sagactl and the
dashboard work with certificates, and a process asked to serve plaintext off loopback exits with the reason before
binding anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.tls import TlsFiles, sync_channel
from deploy.local import LocalSystem, SystemOptions, free_port
from deploy.local.certs import LocalCA, tls_args
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

REPO = Path(__file__).parents[2]


def _order(order_id: str, user_id: str = "u-tls") -> saga_pb2.PlaceOrderRequest:
    return saga_pb2.PlaceOrderRequest(
        order_id=order_id,
        user_id=user_id,
        items=[saga_pb2.Item(item_id="sku-1", quantity=1)],
        payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR"),
    )


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    tmp = tmp_path_factory.mktemp("tls-system")
    # Two routers, as `make run` starts: each has a certificate of its own, and the shards must serve both.
    with LocalSystem(SystemOptions(tmp / "data", shards=2, routers=2, tls=True, metrics=False), log_dir=tmp) as s:
        yield s


def test_place_order_through_every_router_over_mutual_tls(system: LocalSystem) -> None:
    assert [r.name for r in system.routers] == ["router", "router-2"]
    for router in system.routers:
        with sync_channel(router.address, system.client_tls("client")) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            for i in range(6):  # enough orders that both shards (and so both shard→stubs channels) take part
                reply = stub.PlaceOrder(_order(f"tls-{router.name}-{i}"), timeout=30)
                assert reply.status == saga_pb2.SUCCESS, (router.name, reply)
            saga = stub.GetSaga(saga_pb2.GetSagaRequest(order_id=f"tls-{router.name}-0"), timeout=10)
        assert saga.state == saga_pb2.SAGA_STATE_SUCCEEDED, router.name


def test_the_launcher_with_tls_serves_through_a_router_added_as_documented(tmp_path: Path) -> None:
    """`python -m deploy.local --tls` on a cluster file with a third router added the way deploy/README.md says (a
    copy of router-2's table with a name and ports of its own): orders go through each of the three."""
    stubs, shard, *routers = (free_port() for _ in range(5))
    (tmp_path / "shards.toml").write_text(f'[[shards]]\nid = "shard-1"\naddress = "127.0.0.1:{shard}"\n')

    def router(name: str, port: int) -> str:
        return (
            f'[[process]]\nname = "{name}"\nmodule = "shard_router"\nlisten = "127.0.0.1:{port}"\n'
            'args = ["--listen", "{listen}", "--config", "{here}/shards.toml", "--epochs", '
            '"{data_dir}/router.epochs.json"]\n'
        )

    cluster = tmp_path / "cluster.toml"
    cluster.write_text(
        f'[[process]]\nname = "stubs"\nmodule = "service_stubs"\nlisten = "127.0.0.1:{stubs}"\n'
        'args = ["--listen", "{listen}", "--data-dir", "{data_dir}/stubs"]\n'
        f'[[process]]\nname = "shard-1"\nmodule = "coordinator"\nlisten = "127.0.0.1:{shard}"\n'
        'args = ["--shard-id", "shard-1", "--listen", "{listen}", "--journal", "{data_dir}/shard-1.db", '
        '"--services", "{listen:stubs}"]\n'
        + router("router", routers[0])
        + router("router-2", routers[1])
        + router("router-3", routers[2])  # the one added
    )
    log = tmp_path / "launcher.log"
    tls_dir = tmp_path / "tls"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.local", "--tls", "--tls-dir", str(tls_dir), "--config", str(cluster)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SAGA_DATA_DIR": str(tmp_path / "data")},
        )
    try:
        deadline = time.monotonic() + 120  # five processes, one after another, on a busy machine
        while "all 5 processes up" not in (text := log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, f"launcher (exit {proc.poll()}):\n{text}"
            time.sleep(0.2)
        client = LocalCA(tls_dir).issue("client").files
        for name, port in zip(("router", "router-2", "router-3"), routers, strict=True):
            with sync_channel(f"127.0.0.1:{port}", client) as channel:
                reply = saga_pb2_grpc.SagaCoordinatorStub(channel).PlaceOrder(_order(f"tls-3r-{name}"), timeout=30)
            assert reply.status == saga_pb2.SUCCESS, (name, reply)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def test_every_hop_refuses_plaintext_and_foreign_certificates(system: LocalSystem, tmp_path: Path) -> None:
    foreign = LocalCA(tmp_path / "foreign").issue("client").files
    assert system.ca is not None
    impostor = TlsFiles(cert=foreign.cert, key=foreign.key, ca=system.ca.ca_path)
    for child in (system.router, system.shards[0], system.stubs):
        for channel in (grpc.insecure_channel(child.address), sync_channel(child.address, impostor)):
            with channel, pytest.raises(grpc.RpcError) as e:
                saga_pb2_grpc.SagaCoordinatorStub(channel).GetSaga(saga_pb2.GetSagaRequest(order_id="tls-0"), timeout=5)
            assert e.value.code() is grpc.StatusCode.UNAVAILABLE, child.name


def test_an_oversized_order_gets_resource_exhausted(system: LocalSystem) -> None:
    with sync_channel(system.router.address, system.client_tls("client")) as channel:
        with pytest.raises(grpc.RpcError) as e:
            saga_pb2_grpc.SagaCoordinatorStub(channel).PlaceOrder(_order("tls-big", "u" * (2 << 20)), timeout=10)
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def _sagactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagactl", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_sagactl_with_tls_flags(system: LocalSystem) -> None:
    flags = ["--router", system.router.address, *tls_args(system.client_tls("operator"))]
    placed = _sagactl("place", "tls-ctl-1", *flags)
    assert placed.returncode == 0, placed.stderr
    assert "SUCCESS" in placed.stdout
    got = _sagactl("get", "tls-ctl-1", "--json", *flags)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["state"] == "SAGA_STATE_SUCCEEDED"
    # Flags after the command work as well as before it; without them the router is unreachable.
    listed = _sagactl(*flags, "list", "--limit", "3")
    assert listed.returncode == 0, listed.stderr
    plain = _sagactl("get", "tls-ctl-1", "--router", system.router.address, "--timeout", "3")
    assert plain.returncode == 3, plain.stderr
    partial = _sagactl("get", "tls-ctl-1", "--router", system.router.address, "--tls-cert", flags[3])
    assert partial.returncode == 2 and "--tls-key" in partial.stderr


def test_the_dashboard_reads_the_shards_over_tls(system: LocalSystem) -> None:
    board = system.router.spec.dashboard
    assert board is not None
    with sync_channel(system.router.address, system.client_tls("client")) as channel:
        saga_pb2_grpc.SagaCoordinatorStub(channel).PlaceOrder(_order("tls-board"), timeout=30)
    # With an auth policy the dashboard needs a signed-in viewer: a token for a session cookie.
    assert system.policies is not None
    sign_in = urllib.request.Request(
        f"http://{board}/api/session",
        data=json.dumps({"token": system.policies.token("vera", ["client"])}).encode(),
        headers={"Content-Type": "application/json", "Origin": f"http://{board}"},
        method="POST",
    )
    with urllib.request.urlopen(sign_in, timeout=10) as reply:
        cookie = reply.headers["Set-Cookie"].split(";")[0]
    read = urllib.request.Request(f"http://{board}/api/sagas/tls-board", headers={"Cookie": cookie})
    with urllib.request.urlopen(read, timeout=10) as reply:
        body = json.loads(reply.read())
    assert "tls-board" in json.dumps(body)


@pytest.mark.parametrize("module", ["shard_router", "coordinator", "service_stubs"])
def test_plaintext_off_loopback_exits_with_the_reason(module: str, tmp_path: Path) -> None:
    shards = tmp_path / "shards.toml"
    shards.write_text('[[shards]]\nid = "shard-1"\naddress = "127.0.0.1:1"\n')
    args = {
        "shard_router": ["--config", str(shards)],
        "coordinator": ["--shard-id", "s1", "--journal", str(tmp_path / "s1.db"), "--services", "127.0.0.1:1"],
        "service_stubs": ["--data-dir", str(tmp_path / "stubs")],
    }[module]
    # 0.0.0.0 would listen on every interface: the refusal must come before anything is bound.
    done = subprocess.run(
        [sys.executable, "-m", module, "--listen", "0.0.0.0:0", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SAGA_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing plaintext gRPC on 0.0.0.0:0" in done.stdout + done.stderr
    assert "--insecure" in done.stdout + done.stderr
