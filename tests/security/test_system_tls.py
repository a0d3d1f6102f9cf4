"""The whole local system with mutual TLS (deploy.local.LocalSystem(tls=True), real processes on loopback): orders
flow client → router → shard → stubs, every hop refuses plaintext, sagactl and the dashboard work with certificates,
and a process asked to serve plaintext off loopback exits with the reason before binding anything."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.tls import TlsFiles, sync_channel
from deploy.local import LocalSystem, SystemOptions
from deploy.local.certs import tls_args
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
    with LocalSystem(SystemOptions(tmp / "data", shards=2, tls=True, metrics=False), log_dir=tmp) as s:
        yield s


def test_place_order_through_the_router_over_mutual_tls(system: LocalSystem) -> None:
    with sync_channel(system.router.address, system.client_tls("client")) as channel:
        stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
        for i in range(6):  # enough orders that both shards (and so both shard→stubs channels) take part
            reply = stub.PlaceOrder(_order(f"tls-{i}"), timeout=30)
            assert reply.status == saga_pb2.SUCCESS, reply
        saga = stub.GetSaga(saga_pb2.GetSagaRequest(order_id="tls-0"), timeout=10)
    assert saga.state == saga_pb2.SAGA_STATE_SUCCEEDED


def test_every_hop_refuses_plaintext_and_foreign_certificates(system: LocalSystem, tmp_path: Path) -> None:
    from deploy.local.certs import LocalCA

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
