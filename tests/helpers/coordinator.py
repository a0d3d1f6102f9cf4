"""Coordinator shards for tests: in-process (`running_shard`) and as real processes (`ShardProcess`), plus clients."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from coordinator import ShardApp, ShardConfig
from coordinator.config import Limits, RetryPolicy, Services
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.net import free_port, wait_for_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]

# Quick policies so failure paths finish in well under a second.
TEST_FORWARD = RetryPolicy(max_attempts=4, initial_backoff_ms=5, max_backoff_ms=50, attempt_timeout_ms=3_000)
TEST_COMPENSATE = RetryPolicy(max_attempts=6, initial_backoff_ms=5, max_backoff_ms=50, attempt_timeout_ms=3_000)


def shard_config(tmp_path: Path, services: str, **overrides: Any) -> ShardConfig:
    cfg = ShardConfig(
        shard_id=overrides.pop("shard_id", "shard-t"),
        listen="127.0.0.1:0",
        journal_path=str(tmp_path / "shard.db"),
        journal_key="test-secret",
        services=Services(services, services, services, services),
        forward=TEST_FORWARD,
        compensate=TEST_COMPENSATE,
        seed=1,
    )
    return dataclasses.replace(cfg, **overrides)


@asynccontextmanager
async def running_shard(cfg: ShardConfig) -> AsyncIterator[ShardApp]:
    app = await ShardApp.start(cfg)
    try:
        yield app
    finally:
        await app.stop(grace_s=0.5)


class SagaClient:
    """Typed async client for saga.v1 (coordinator or router)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.saga = saga_pb2_grpc.SagaCoordinatorStub(self.channel)
        self.admin = saga_pb2_grpc.SagaAdminStub(self.channel)

    async def __aenter__(self) -> SagaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    async def place(self, req: saga_pb2.PlaceOrderRequest, timeout_s: float = 30.0) -> saga_pb2.PlaceOrderResponse:
        return await self.saga.PlaceOrder(req, timeout=timeout_s)

    async def get(self, order_id: str, events: bool = False) -> saga_pb2.Saga:
        return await self.saga.GetSaga(saga_pb2.GetSagaRequest(order_id=order_id, include_events=events), timeout=10)


def place_request(
    order_id: str,
    token: str = "tok_ok",
    items: list[tuple[str, int]] | None = None,
    amount_cents: int = 2_500,
    **kw: Any,
) -> saga_pb2.PlaceOrderRequest:
    return saga_pb2.PlaceOrderRequest(
        order_id=order_id,
        user_id=kw.pop("user_id", "user-1"),
        items=[saga_pb2.Item(item_id=i, quantity=q) for i, q in (items or [("sku-1", 2), ("sku-2", 1)])],
        payment_info=saga_pb2.PaymentInfo(payment_token=token, amount_cents=amount_cents, currency="EUR"),
        **kw,
    )


class ShardProcess:
    """`python -m coordinator` as a child process on a fixed port, restartable on the same journal."""

    def __init__(
        self,
        tmp_path: Path,
        services: str,
        shard_id: str = "shard-p",
        env: dict[str, str] | None = None,
        extra_config: str = "",
    ):
        self.port = free_port()
        self.shard_id = shard_id
        self.journal = tmp_path / f"{shard_id}.db"
        self.services = services
        self.log_path = tmp_path / f"{shard_id}.log"
        self.config_path = tmp_path / f"{shard_id}.toml"
        self.config_path.write_text(
            "default_ttl_ms = 60000\n"
            "[forward]\nmax_attempts = 6\ninitial_backoff_ms = 5\nmax_backoff_ms = 100\nattempt_timeout_ms = 3000\n"
            "[compensate]\nmax_attempts = 50\ninitial_backoff_ms = 5\nmax_backoff_ms = 200\nattempt_timeout_ms = 3000\n"
            + extra_config
        )
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **self.env, **(extra_env or {}), "SAGA_JOURNAL_KEY": "test-secret"}
        env.pop("SAGA_CRASH_POINT", None) if "SAGA_CRASH_POINT" not in (extra_env or {}) else None
        cmd = [
            sys.executable, "-m", "coordinator", "--config", str(self.config_path), "--shard-id", self.shard_id,
            "--listen", self.address, "--journal", str(self.journal), "--services", self.services,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_grpc(self.address, timeout_s=20)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def terminate(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=5)
        return self.proc.returncode

    def rss_kib(self) -> int:
        """Resident memory of the shard process (Linux /proc)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


__all__ = ["Limits", "SagaClient", "ShardProcess", "place_request", "running_shard", "shard_config"]
