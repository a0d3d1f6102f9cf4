"""Real coordinator shards (in this process, on 127.0.0.1 port 0, real SQLite journals) behind a real router, with the
real stub services, for tests of what only real shards do (definitions, StartSaga)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from coordinator import ShardApp
from coordinator.config import Services
from protos.saga.v1 import saga_pb2
from shard_router import RouterServer, load
from shard_router.config import default_epochs_path
from shard_router.defs import cli as defs_cli
from shard_router.metrics import RouterMetrics
from tests.helpers.coordinator import SagaClient, place_request, shard_config
from tests.helpers.stubs import running_stubs

from .conftest import FAST, write_shards

DATA = Path(__file__).parent / "data"


def start_request(
    saga_type: str, key: str, order: saga_pb2.PlaceOrderRequest | None = None, no_wait: bool = False
) -> saga_pb2.StartSagaRequest:
    """A StartSaga whose input is a PlaceOrderRequest (what the order flow and tests/shard_router/data take)."""
    packed = any_pb2.Any()
    packed.Pack(order or place_request(key))
    return saga_pb2.StartSagaRequest(saga_type=saga_type, key=key, input=packed, no_wait=no_wait)


class RealSystem:
    def __init__(self, tmp_path: Path, stubs_address: str, **shard_overrides: Any) -> None:
        self.tmp_path = tmp_path
        self.stubs_address = stubs_address
        self.shard_overrides = shard_overrides
        self.apps: dict[str, ShardApp] = {}
        self.config_path = tmp_path / "shards.toml"
        self.router: RouterServer | None = None
        self.client: SagaClient | None = None
        self._journals = 0

    @property
    def defs_path(self) -> Path:
        return self.tmp_path / "shards.defs.json"

    async def start_shard(self, shard_id: str) -> str:
        """Starts the shard on a journal of its own (a fresh one each time: a restart on a new disk)."""
        self._journals += 1
        data = self.tmp_path / f"{shard_id}-{self._journals}"
        data.mkdir()
        cfg = shard_config(data, self.stubs_address, shard_id=shard_id)
        # Every service (loyalty included) at the stubs' one address.
        cfg = dataclasses.replace(cfg, services=Services.all_at(self.stubs_address), **self.shard_overrides)
        self.apps[shard_id] = await ShardApp.start(cfg)
        return self.apps[shard_id].address

    async def stop_shard(self, shard_id: str) -> None:
        await self.apps.pop(shard_id).stop(grace_s=0.5)

    def write_config(self) -> None:
        shards = [(sid, app.address) for sid, app in self.apps.items()]
        write_shards(self.config_path, shards, FAST, default_epochs_path(self.config_path))

    async def start_router(self, metrics: RouterMetrics | None = None) -> SagaClient:
        await self.stop_router()
        self.router = RouterServer(load(self.config_path, listen="127.0.0.1:0", env={}), metrics=metrics)
        await self.router.start()
        self.client = SagaClient(f"127.0.0.1:{self.router.port}")
        return self.client

    async def stop_router(self) -> None:
        if self.client is not None:
            await self.client.channel.close()
            self.client = None
        if self.router is not None:
            await self.router.stop(0.5)
            self.router = None

    async def defs(self, *args: str) -> int:
        """`saga-router defs ARGS --config ...` (in a thread: the command runs its own event loop)."""
        return await asyncio.to_thread(defs_cli.main, [*args, "--config", str(self.config_path)])

    async def close(self) -> None:
        await self.stop_router()
        for sid in list(self.apps):
            await self.stop_shard(sid)


@contextlib.asynccontextmanager
async def real_system(
    tmp_path: Path, shard_ids: Sequence[str] = ("shard-1", "shard-2"), **shard_overrides: Any
) -> AsyncIterator[tuple[RealSystem, SagaClient]]:
    async with running_stubs(tmp_path / "stubs") as stubs:
        system = RealSystem(tmp_path, stubs.address, **shard_overrides)
        try:
            for sid in shard_ids:
                await system.start_shard(sid)
            system.write_config()
            client = await system.start_router()
            yield system, client
        finally:
            await system.close()
