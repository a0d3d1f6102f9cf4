"""The process around the services: reflection, health, service subsets, the CLI, and the store underneath."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_stubs import StubServer
from tests.helpers.stubs import REPO_ROOT, ShopClient, StubControlClient, running_stubs
from tests.service_stubs.conftest import rpc_error

GRPCURL = Path(sys.executable).parent / "grpcurl"


async def test_reflection_lists_every_service(stubs: StubServer) -> None:
    listing = await asyncio.to_thread(
        subprocess.run,
        [str(GRPCURL), "-plaintext", stubs.address, "list"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert set(listing.stdout.split()) >= {
        "shop.v1.OrderService",
        "shop.v1.InventoryService",
        "shop.v1.PaymentService",
        "shop.v1.ShippingService",
        "shop.v1.LoyaltyService",
        "service_stubs.v1.StubControl",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_health_reports_each_hosted_service(stubs: StubServer) -> None:
    async with grpc.aio.insecure_channel(stubs.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "shop.v1.PaymentService", "service_stubs.v1.StubControl"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_subset_of_services(tmp_path: Path) -> None:
    async with running_stubs(tmp_path, services=["payment", "control"]) as stubs:
        files = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.glob("*.db")))
        assert files == ["payment.db"]
        async with ShopClient(stubs.address) as shop, StubControlClient(stubs.address) as control:
            await shop.charge("o-1", key="k1")
            await rpc_error(shop.reserve("o-1", key="k2"), grpc.StatusCode.UNIMPLEMENTED)
            await rpc_error(control.set_stock({"sku": 1}), grpc.StatusCode.FAILED_PRECONDITION)


async def test_commits_are_grouped(stubs: StubServer, shop: ShopClient) -> None:
    await asyncio.gather(*(shop.charge(f"o-{i}", key=f"k-{i}") for i in range(300)))
    store = stubs.services["payment"].store
    assert store.rows_written == 300
    assert store.transactions < 300, "every call got its own transaction"


async def test_files_are_sqlite_in_wal_mode(stubs: StubServer, shop: ShopClient) -> None:
    await shop.charge("o-1", key="k1")
    with sqlite3.connect(stubs.data_dir / "payment.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 1


async def test_prometheus_metrics(tmp_path: Path) -> None:
    async with running_stubs(tmp_path, metrics_listen="127.0.0.1:0") as stubs, ShopClient(stubs.address) as shop:
        await shop.charge("o-1", key="k1", token="tok_secret_token", amount_cents=123_456)
        await shop.charge("o-2", key="k2", token="tok_secret_lro-charge-never", amount_cents=7)
        await shop.get_operation("payment", "k2")
        assert stubs.metrics is not None
        url = f"http://127.0.0.1:{stubs.metrics.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'saga_stub_calls_total{code="OK",method="ChargePayment"} 2.0' in text
    assert 'saga_stub_calls_total{code="OK",method="/shop.v1.PaymentService/GetOperation"} 1.0' in text
    assert 'saga_stub_store_rows_total{service="payment"} 2.0' in text
    assert 'saga_stub_operations_total{event="accepted",method="ChargePayment"} 1.0' in text
    assert 'saga_stub_operations_total{event="completed",method="ChargePayment"} 0.0' in text
    assert 'saga_stub_operations_in_progress{service="payment"} 1.0' in text
    assert "tok_secret" not in text and "123456" not in text


@pytest.mark.parametrize(
    "args",
    [["--services", "order,billing"], ["--listen", "nowhere"], ["--stock", "sku-1=many"]],
    ids=["unknown service", "bad listen", "bad stock"],
)
def test_cli_rejects_bad_flags(tmp_path: Path, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service_stubs", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 2
    assert "error:" in done.stderr


def test_cli_fails_cleanly_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service_stubs", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=REPO_ROOT,
        )
    assert done.returncode == 1, done.stderr
