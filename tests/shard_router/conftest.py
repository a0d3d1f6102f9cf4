"""Fixtures for router tests: fake shards and in-process routers on 127.0.0.1, all stopped at the end of each test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2
from grpc_status import rpc_status

from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from shard_router import RouterServer, epochs, load

from .fake_shard import FakeShard


def write_shards(
    path: Path,
    shards: Sequence[tuple[str, str] | tuple[str, str, bool]],
    extra: str = "",
    epochs_path: Path | None = None,
) -> None:
    """Writes a shards.toml listing (id, address[, draining]); with epochs_path, also commits its ring there (what an
    operator does with `saga-router epochs commit`)."""
    lines = [extra] if extra else []
    for entry in shards:
        lines += ["[[shards]]", f'id = "{entry[0]}"', f'address = "{entry[1]}"']
        if len(entry) > 2 and entry[2]:
            lines.append("draining = true")
    path.write_text("\n".join(lines) + "\n")
    if epochs_path is not None:
        commit_ring(path, epochs_path)


def commit_ring(config_path: Path, epochs_path: Path) -> None:
    """Records the config's ring as the next epoch, as `saga-router epochs commit` does."""
    history = epochs.read(epochs_path)
    ring = load(config_path, epochs_path=epochs_path, env={}).ring
    new = epochs.committed(history, ring, time.time_ns() // 1_000_000)
    if new != history:
        epochs.write(epochs_path, new, expect=history.number)


FAST = "[router]\nreload_interval_s = 0.1"


class Cluster:
    """Fake shards plus routers over them, for one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "shards.toml"
        self.epochs_path = tmp_path / "shards.epochs.json"
        self.shards: dict[str, FakeShard] = {}
        self.routers: list[RouterServer] = []
        self.channels: list[grpc.aio.Channel] = []

    async def add_shard(self, shard_id: str) -> FakeShard:
        shard = FakeShard(shard_id)
        await shard.start()
        self.shards[shard_id] = shard
        return shard

    def write_config(self, ids: Sequence[str] | None = None, draining: Sequence[str] = (), extra: str = FAST) -> None:
        """Lists the given fake shards (default: all) in the shards file; the [router] table polls every 0.1 s."""
        ids = list(self.shards) if ids is None else ids
        write_shards(
            self.config_path, [(i, self.shards[i].address, i in draining) for i in ids], extra, self.epochs_path
        )

    async def start_router(self) -> RouterServer:
        if not self.config_path.exists():
            self.write_config()
        config = load(self.config_path, listen="127.0.0.1:0", epochs_path=self.epochs_path, env={})
        router = RouterServer(config)
        await router.start()
        self.routers.append(router)
        return router

    def channel(self, router: RouterServer) -> grpc.aio.Channel:
        return self.channel_to(f"127.0.0.1:{router.port}")

    def channel_to(self, address: str) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address)
        self.channels.append(channel)
        return channel

    def stubs(self, router: RouterServer) -> tuple[saga_pb2_grpc.SagaCoordinatorStub, saga_pb2_grpc.SagaAdminStub]:
        channel = self.channel(router)
        return saga_pb2_grpc.SagaCoordinatorStub(channel), saga_pb2_grpc.SagaAdminStub(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for router in self.routers:
            await router.stop(0)
        for shard in self.shards.values():
            await shard.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        await c.close()


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls check until it is true, or fails the test after timeout_s."""
    import asyncio
    import inspect
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


def order(order_id: str) -> saga_pb2.PlaceOrderRequest:
    """A valid PlaceOrder request (fake shards accept anything; this one a real shard accepts too)."""
    return saga_pb2.PlaceOrderRequest(
        order_id=order_id,
        user_id="u-1",
        items=[saga_pb2.Item(item_id="sku-1", quantity=1)],
        payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=100, currency="EUR"),
    )


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carried in "grpc-status-details-bin", if any."""

    class _Call:  # rpc_status.from_call wants the sync-call shape: methods, not coroutines
        def code(self) -> grpc.StatusCode:
            return error.code()

        def details(self) -> str:
            return error.details() or ""

        def trailing_metadata(self) -> object:
            return tuple(error.trailing_metadata())

    return rpc_status.from_call(_Call())
