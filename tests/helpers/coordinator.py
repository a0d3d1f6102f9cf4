"""Coordinator shards for tests: in-process (`running_shard`) and as real processes run by the launcher
(`ShardProcess`), plus clients."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from coordinator import ShardApp, ShardConfig
from coordinator.config import Limits, RetryPolicy, Services
from deploy.local import ClusterSpec, ProcessSpec, Supervisor, free_port
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

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
        services=Services.all_at(services),
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
    """`python -m coordinator` on a fixed port, restartable on the same journal: one process run by the launcher's
    Supervisor (deploy.local), its output appended to <tmp_path>/<shard_id>.log."""

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
        listen = f"127.0.0.1:{self.port}"
        args = [
            "--config", str(self.config_path), "--shard-id", shard_id, "--listen", listen,
            "--journal", str(self.journal), "--services", services,
        ]  # fmt: skip
        # An empty crash point disarms one inherited from the test run's environment: only start() arms it.
        env = {"SAGA_CRASH_POINT": "", **self.env, "SAGA_JOURNAL_KEY": "test-secret"}
        spec = ProcessSpec(shard_id, "coordinator", listen, tuple(args), env)
        cluster = ClusterSpec((spec,), tmp_path, ready_timeout_s=20.0, stop_timeout_s=15.0)
        self.supervisor = Supervisor(cluster, log_dir=tmp_path, cwd=REPO_ROOT)
        self.child = self.supervisor[shard_id]

    @property
    def address(self) -> str:
        return self.child.address

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """Starts it (SIGKILLing it first if it still runs) and blocks until it is healthy; LaunchError (with its log's
        tail) if it does not get there. `extra_env` (e.g. SAGA_CRASH_POINT) is for this start only."""
        # restart(), not start(): only it takes an environment for one start.
        self.supervisor.restart(self.shard_id, extra_env)

    def kill(self) -> None:
        self.supervisor.kill(self.shard_id)

    def wait_exit(self, timeout_s: float) -> int:
        assert self.child.proc is not None, "never started"
        return self.child.proc.wait(timeout=timeout_s)

    def terminate(self) -> int:
        """SIGTERM and wait (SIGKILL after 15 s). Returns the exit code (0 if it never started)."""
        self.supervisor.stop()
        return self.child.exit_code() or 0

    def rss_kib(self) -> int:
        """Resident memory of the shard process (Linux /proc)."""
        assert self.child.running, "not running"
        return self.child.rss_kib()

    def log(self) -> str:
        return self.child.log()


__all__ = ["Limits", "SagaClient", "ShardProcess", "place_request", "running_shard", "shard_config"]
